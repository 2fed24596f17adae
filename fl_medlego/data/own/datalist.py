"""Datasets given as a list of their files: a CSV manifest or a MONAI-style datalist JSON.

Both name each image by a path relative to the list's own folder, which must stay inside that folder (links
resolved, see `sources.resolve_inside`), and give its label, optionally its split and its patient; both are read
in their own order, refuse a file listed twice, and name the file and row of every mistake with its fix.
`sources` describes the shapes and re-exports `list_manifest` and `list_datalist`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .sources import (
    MULTI_LABEL,
    DataSourceError,
    Entry,
    Listing,
    _check_task,
    _image_check,
    _relative,
    resolve_inside,
    task_of,
)
from .splits import SPLITS

_INTEGER = re.compile(r"[+-]?\d+")
_IMAGES_ONLY = "list image files only (PNG, JPEG, TIFF, DICOM)"

# ----- CSV manifests ---------------------------------------------------------------------------------------


RESERVED_COLUMNS = {"path": "path", "label": "label", "split": "split", "patient": "patient",
                    "patient_id": "patient", "patientid": "patient", "patient id": "patient"}


def _read_csv(csv_path: Path) -> list[list[str]]:
    name = csv_path.name
    if not csv_path.is_file():
        raise DataSourceError(str(csv_path), "manifest not found", "give the path of an existing CSV file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise DataSourceError(name, "is not UTF-8 text", "save it as a UTF-8 CSV") from None
    except csv.Error as err:
        raise DataSourceError(name, f"is not a readable CSV ({err})", "save it as a plain CSV") from None
    except OSError as err:
        raise DataSourceError(name, f"cannot be read ({err.strerror})", "check its permissions") from None
    if not rows:
        raise DataSourceError(name, "is empty", "write a header row (path, label, ...) and one row per image")
    return rows


def _label_reader(where_of: Callable[[int], str], classes: Sequence[str] | None):
    """A function row -> text label -> class index, and one giving the class names at the end: labels are all
    integers (indices) or all class names, never a mix."""
    seen: dict[bool, int] = {}
    texts: list[tuple[int, str]] = []

    def read(row: int, value: str) -> int | str:
        numeric = bool(_INTEGER.fullmatch(value))
        seen.setdefault(numeric, row)
        if len(seen) == 2:
            raise DataSourceError(where_of(row), f"label {value!r} mixes integer and text labels (row "
                                  f"{seen[not numeric]} is {'text' if numeric else 'an integer'})",
                                  "use class names everywhere, or class indices everywhere")
        if numeric:
            index = int(value)
            if index < 0 or (classes is not None and index >= len(classes)):
                known = f"0..{len(classes) - 1}" if classes is not None else ">= 0"
                raise DataSourceError(where_of(row), f"label {index} is outside the classes ({known})",
                                      "fix the label or the class list")
            return index
        if classes is not None and value not in classes:
            raise DataSourceError(where_of(row), f"label {value!r} is not one of the classes ({', '.join(classes)})",
                                  "fix the label or add the class to the class list")
        texts.append((row, value))
        return value

    def names(indices: list[int | str]) -> tuple[str, ...]:
        if classes is not None:
            return tuple(classes)
        if texts:
            return tuple(sorted({v for _, v in texts}))
        return tuple(str(i) for i in range(max(indices, default=-1) + 1))  # type: ignore[type-var]

    return read, names


def _finding(value: str, column: str, where: str) -> int:
    if value not in ("0", "1"):
        raise DataSourceError(where, f"finding {column!r} is {value!r}, not 0 or 1", "write 1 (present) or 0 (absent)")
    return int(value)


def _split_of(value: str, where: str) -> str | None:
    split = value.strip().lower() or None
    if split is not None and split not in SPLITS:
        raise DataSourceError(where, f"split {value!r} is not one of {', '.join(SPLITS)}",
                              "use train, val or test, or leave the split column out")
    return split


def _image_path(root: Path, value: str, where: str, seen: dict[str, str], here: str) -> str:
    """A manifest row's (or datalist item's) image path, normalised, checked to be an image file inside root and
    not listed twice."""
    if not value:
        raise DataSourceError(where, "empty path", "give the image's path relative to the manifest's folder")
    real = resolve_inside(root, value, where)
    path = _relative(root, value)
    if path in seen:
        raise DataSourceError(where, f"{path!r} is listed twice (also {seen[path]})", "remove the duplicate")
    seen[path] = here
    if not real.is_file():  # a folder, a device or a pipe: never opened (a pipe named .png would block a reader)
        raise DataSourceError(where, f"{path!r} is not a regular file", _IMAGES_ONLY)
    if not _image_check()(real):
        raise DataSourceError(where, f"{path!r} is not an image file", _IMAGES_ONLY)
    return path


def _finish(source: str, root: Path, task: str | None, names: tuple[str, ...], entries: list[Entry],
            where: str, multi_label: bool) -> Listing:
    if not entries:
        raise DataSourceError(where, "lists no images", "add one row per image")
    splits = [e.split is None for e in entries]
    if any(splits) and not all(splits):
        raise DataSourceError(where, f"{sum(splits)} of {len(entries)} rows have no split",
                              "give every row a split (train, val or test), or none")
    return Listing(source, root, _check_task(task, len(names), where, multi_label), names, tuple(entries))


def _class_list(classes: Sequence[str] | None, name: str) -> tuple[str, ...] | None:
    """The class names given with a manifest (its classes.txt), in index order: none may be empty or repeated,
    since a label names its class and a class index names one column of the model's output."""
    if classes is None:
        return None
    classes = tuple(str(c).strip() for c in classes)
    fix = "give each class once, in index order (classes.txt beside the manifest: one name per line)"
    if not classes or not all(classes):
        raise DataSourceError(f"the class list of {name}", "is empty or has an empty name", fix)
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise DataSourceError(f"the class list of {name}", f"names {', '.join(map(repr, twice))} twice", fix)
    return classes


def list_manifest(csv_path: Path, task: str | None = None, classes: Sequence[str] | None = None) -> Listing:
    """A CSV manifest (see the module docstring); paths are relative to the CSV's folder."""
    csv_path, task = Path(csv_path), task_of(task)
    root, name = csv_path.parent, csv_path.name
    classes = _class_list(classes, name)
    rows = _read_csv(csv_path)
    # The reserved columns are matched whatever their case, with the usual names of a patient column
    # (a spreadsheet's "Patient" or "PatientID" must not be read as a finding, nor leave patients unnamed).
    header = [RESERVED_COLUMNS.get(h.strip().lower(), h.strip()) for h in rows[0]]

    def where(row: int) -> str:
        return f"{name}, row {row}"

    if "path" not in header:
        if len(rows[0]) == 1 and ";" in rows[0][0]:
            raise DataSourceError(where(1), "is separated by ';', not ','", "save it as comma-separated CSV")
        raise DataSourceError(where(1), "no 'path' column", "name the column of image paths 'path'")
    if len(set(header)) != len(header):
        raise DataSourceError(where(1), "a column name appears twice", "give every column its own name")
    multi_label = task == MULTI_LABEL or (task is None and "label" not in header)
    findings = [h for h in header if h not in ("path", "split", "patient")] if multi_label else []
    if not multi_label and "label" not in header:
        raise DataSourceError(where(1), "no 'label' column", "add a 'label' column (class name or index), or one "
                              "0/1 column per finding with task multi-label")
    if multi_label and not findings:
        raise DataSourceError(where(1), "no label columns", "add a 'label' column, or one 0/1 column per finding")
    if multi_label and classes is not None and len(classes) != len(findings):
        raise DataSourceError(where(1), f"{len(findings)} finding columns but {len(classes)} class names given",
                              "give one name per finding column, or none")
    column = {h: i for i, h in enumerate(header)}
    read_label, class_names = _label_reader(where, classes)
    seen: dict[str, str] = {}
    raw: list[tuple[str, int | str | tuple[int, ...], str | None, str | None]] = []
    for row, values in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in values):
            continue  # a blank line
        if len(values) != len(header):
            raise DataSourceError(where(row), f"{len(values)} fields, the header has {len(header)}",
                                  "give every row one value per column (quote values holding commas)")
        cell = {h: values[i].strip() for h, i in column.items()}
        path = _image_path(root, cell["path"], where(row), seen, f"row {row}")
        if multi_label:
            label: int | str | tuple[int, ...] = tuple(_finding(cell[f], f, where(row)) for f in findings)
        elif not cell["label"]:
            raise DataSourceError(where(row), "empty label", "give every image its class")
        else:
            label = read_label(row, cell["label"])
        split = _split_of(cell["split"], where(row)) if "split" in cell else None
        raw.append((path, label, split, cell.get("patient") or None))
    if multi_label:
        names = tuple(classes) if classes is not None else tuple(findings)
        entries = [Entry(p, lab, s, pt) for p, lab, s, pt in raw]  # type: ignore[arg-type]
    else:
        names = class_names([lab for _, lab, _, _ in raw])  # type: ignore[misc]
        entries = [Entry(p, (lab if isinstance(lab, int) else names.index(lab),), s, pt)  # type: ignore[arg-type]
                   for p, lab, s, pt in raw]
    return _finish("manifest", root, task, names, entries, name, multi_label)


# ----- datalist JSON ---------------------------------------------------------------------------------------

DATALIST_KEYS = {"training": "train", "validation": "val", "test": "test"}


def list_datalist(json_path: Path, task: str | None = None) -> Listing:
    """A MONAI/Decathlon-style datalist: integer labels (or 0/1 lists for multi-label), optional "patient" per
    item and top-level "labels" {"0": name}. With "training" alone the splits are left to be drawn."""
    json_path, task = Path(json_path), task_of(task)
    root, name = json_path.parent, json_path.name
    if not json_path.is_file():
        raise DataSourceError(str(json_path), "datalist not found", "give the path of an existing JSON file")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataSourceError(name, f"is not valid JSON ({err})", "fix the file (a UTF-8 JSON object)") from None
    except RecursionError:
        raise DataSourceError(name, "nests lists or objects too deeply to read", "write a datalist: "
                              '{"training": [{"image": ..., "label": ...}]}') from None
    except OSError as err:
        raise DataSourceError(name, f"cannot be read ({err.strerror})", "check its permissions") from None
    if not isinstance(data, dict) or not isinstance(data.get("training"), list) or not data["training"]:
        raise DataSourceError(name, "has no 'training' list", 'write {"training": [{"image": ..., "label": ...}]}')
    given = any(data.get(key) for key in ("validation", "test"))
    seen: dict[str, str] = {}
    entries: list[Entry] = []
    kinds: set[bool] = set()
    for key, split in DATALIST_KEYS.items():
        items = data.get(key) or []
        for i, item in enumerate(items if isinstance(items, list) else [items]):
            where = f"{name}, {key}[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                raise DataSourceError(where, "is not an object with an 'image' path", 'write {"image": "a.png", '
                                      '"label": 0}')
            path = _image_path(root, item["image"].strip(), where, seen, f"{key}[{i}]")
            labels = _datalist_label(item.get("label"), where)
            kinds.add(len(labels) > 1 or isinstance(item.get("label"), list))
            if len(kinds) == 2:
                raise DataSourceError(where, "mixes integer labels and lists of findings", "use one kind of label")
            patient = item.get("patient")
            entries.append(Entry(path, labels, split if given else None, None if patient is None else str(patient)))
    multi_label = kinds == {True}
    return _finish("datalist", root, task, _datalist_names(data, entries, name, multi_label), entries, name,
                   multi_label)


def _datalist_label(value: object, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return (value,)
    if isinstance(value, list) and value and all(v in (0, 1) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise DataSourceError(where, f"label {value!r} is not a class index >= 0 or a list of 0/1 findings",
                          "give every image an integer label (or a 0/1 list for multi-label)")


def _datalist_names(data: dict, entries: list[Entry], where: str, multi_label: bool) -> tuple[str, ...]:
    width = max(len(e.labels) for e in entries) if multi_label else max(e.labels[0] for e in entries) + 1
    if multi_label and any(len(e.labels) != width for e in entries):
        raise DataSourceError(where, "finding lists of different lengths", "give every image one 0/1 per finding")
    labels = data.get("labels")
    if labels is None:
        return tuple(str(i) for i in range(width))
    if not isinstance(labels, dict) or sorted(labels, key=str) != sorted(str(i) for i in range(len(labels))):
        raise DataSourceError(where, "'labels' is not {\"0\": name, \"1\": name, ...}", "number the classes from 0")
    if len(labels) < width:
        raise DataSourceError(where, f"labels go up to {width - 1} but 'labels' names {len(labels)}",
                              "name every class in 'labels'")
    return tuple(str(labels[str(i)]) for i in range(len(labels)))
