"""What a hospital's dataset holds, listed without decoding any image: its files, labels, splits and patients.

Three shapes, each read the way its users expect:

- a folder `ROOT/<class>/<files>` or `ROOT/{train,val,test}/<class>/<files>`: class names are the sorted
  folder names, as torchvision's ImageFolder has them;
- a CSV manifest: a `path` column and a `label` column (a class name or an integer index), or one 0/1 column
  per finding for a multi-label set; optional `split` and `patient` columns; rows kept in the CSV's order;
- a datalist JSON in the shape of MONAI's / the Medical Segmentation Decathlon's: `{"training": [{"image": ...,
  "label": ...}], "validation": [...], "test": [...]}`.

Every file must lie inside the dataset's folder (the folder, or the CSV's / JSON's folder), links resolved:
a manifest that names `../x.png` or a link out of the folder is refused, so registering a dataset never reads
files its operator did not put there. Every mistake is a `DataSourceError` naming the file (and row) and the fix.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...errors import UnknownNameError, UserError
from .splits import SPLITS

# MedMNIST's task strings (fl_medlego.metrics.MULTI_LABEL is the third), so training treats both alike.
MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL = "multi-class", "binary-class", "multi-label, binary-class", \
    "ordinal-regression"
TASKS = (MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL)
TASK_WORDS = {"multi-class": MULTI_CLASS, "binary": BINARY, "multi-label": MULTI_LABEL}  # the command line's words
_INTEGER = re.compile(r"[+-]?\d+")


class DataSourceError(UserError):
    """A dataset that cannot be listed as it is; `where` names the file (relative to the dataset) and row."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}; {fix}")


@dataclass(frozen=True)
class Entry:
    """One image: its POSIX path relative to the dataset root, its labels (single-label: (class,); multi-label:
    one 0/1 per finding), the split the data gives it (or None) and its patient (or None)."""

    path: str
    labels: tuple[int, ...]
    split: str | None = None
    patient: str | None = None


@dataclass(frozen=True)
class Listing:
    """A dataset's images in a deterministic order, with the folder their paths are relative to."""

    source: str  # "folder" | "manifest" | "datalist"
    root: Path
    task: str  # a MedMNIST task string
    class_names: tuple[str, ...]  # in class-index order (findings, for multi-label)
    entries: tuple[Entry, ...]
    ignored: tuple[str, ...] = ()  # relative paths skipped (hidden files), for the check to report


def task_of(word: str | None) -> str | None:
    """The MedMNIST task string for a command-line word (multi-class, binary, multi-label) or a task string."""
    if word is None or word in TASKS:
        return word
    if word in TASK_WORDS:
        return TASK_WORDS[word]
    raise UnknownNameError("task", word, TASK_WORDS)


def _image_check() -> Callable[[Path], bool]:
    from .decode import is_image_file  # the decoders are imported only when a dataset is listed

    return is_image_file


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def resolve_inside(root: Path, relative: str, where: str | None = None) -> Path:
    """The real path of `relative` (or an absolute path) within `root`; anything that leaves root, lexically or
    through a link, a missing file and a link loop are errors naming `where` (default: the path itself)."""
    where = where or relative
    fix = "name a file inside the dataset folder (paths are relative to it)"
    root_abs, root_real = os.path.abspath(root), os.path.realpath(root)
    candidate = os.path.normpath(os.path.join(root_abs, relative))  # an absolute `relative` replaces root_abs
    if not (_inside(candidate, root_abs) or _inside(candidate, root_real)):
        raise DataSourceError(where, f"path {relative!r} is outside the dataset folder", fix)
    try:
        real = Path(candidate).resolve(strict=True)
    except FileNotFoundError:
        raise DataSourceError(where, f"file {relative!r} does not exist", "fix the path or add the file") from None
    except RuntimeError:  # Python 3.11 reports a link loop this way
        raise DataSourceError(where, f"{relative!r} is a symlink loop", "fix or remove the link") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataSourceError(where, f"{relative!r} is a symlink loop", "fix or remove the link") from None
        raise DataSourceError(where, f"{relative!r} cannot be opened ({err.strerror})", "check its permissions") \
            from None
    if not _inside(str(real), root_real):
        raise DataSourceError(where, f"{relative!r} is a link to {real}, outside the dataset folder",
                              "copy the file into the dataset folder instead of linking to it")
    return real


def _relative(root: Path, relative: str) -> str:
    """The normalised POSIX form of a path already known to be inside root."""
    candidate = os.path.normpath(os.path.join(os.path.abspath(root), relative))
    base = os.path.abspath(root) if _inside(candidate, os.path.abspath(root)) else os.path.realpath(root)
    return PurePosixPath(*Path(os.path.relpath(candidate, base)).parts).as_posix()


def _check_task(task: str | None, count: int, where: str, multi_label: bool = False) -> str:
    """The task a dataset of `count` classes has (the one asked for, if it fits)."""
    if multi_label:
        if task not in (None, MULTI_LABEL):
            raise DataSourceError(where, f"the labels are 0/1 findings but task {task!r} was asked for",
                                  "use task multi-label, or give a single 'label' column")
        if count < 1:
            raise DataSourceError(where, "no finding columns", "add one 0/1 column per finding")
        return MULTI_LABEL
    if task == MULTI_LABEL:
        raise DataSourceError(where, "task multi-label needs one 0/1 column per finding",
                              "use a CSV manifest with finding columns, or task multi-class / binary")
    if count < 2:
        raise DataSourceError(where, f"{count} class(es); training needs at least 2", "add images of another class")
    if task == BINARY and count != 2:
        raise DataSourceError(where, f"task binary with {count} classes", "use task multi-class, or keep 2 classes")
    return task or (BINARY if count == 2 else MULTI_CLASS)


# ----- folders ---------------------------------------------------------------------------------------------


def _walk(folder: Path, rel: str, ancestors: frozenset[str], files: list[str], ignored: list[str]) -> None:
    """Every file under `folder` (links followed), as paths relative to the dataset root; hidden ones go to
    `ignored`. A link back to a folder it is inside is a loop, an error naming the link."""
    real = os.path.realpath(folder)
    if real in ancestors:
        raise DataSourceError(rel, "is a symlink loop (a link to a folder it is inside)", "remove the link")
    ancestors = ancestors | {real}
    with os.scandir(folder) as found:
        items = sorted(found, key=lambda item: item.name)
    for item in items:
        path = f"{rel}/{item.name}"
        if item.name.startswith("."):
            ignored.append(path)
        elif item.is_dir(follow_symlinks=True):
            _walk(Path(item.path), path, ancestors, files, ignored)
        elif item.is_file(follow_symlinks=True):
            files.append(path)
        else:
            raise DataSourceError(path, "is a broken link or not a regular file", "remove it or fix its target")


def _subfolders(folder: Path, rel: str, ignored: list[str]) -> list[str]:
    """The visible folders directly in `folder`; a visible file there is an error (it belongs to no class)."""
    names = []
    with os.scandir(folder) as found:
        items = sorted(found, key=lambda item: item.name)
    for item in items:
        path = f"{rel}/{item.name}" if rel else item.name
        if item.name.startswith("."):
            ignored.append(path)
        elif item.is_dir(follow_symlinks=True):
            names.append(item.name)
        else:
            raise DataSourceError(path, "is not inside a class folder",
                                  "move it into its class folder, or out of the dataset folder")
    return names


def list_folder(root: Path, task: str | None = None) -> Listing:
    """A folder of class folders, optionally inside train/val/test folders (train and test at least)."""
    root, task = Path(root), task_of(task)
    if not root.is_dir():
        raise DataSourceError(str(root), "is not a folder", "give the folder that holds one folder per class")
    ignored: list[str] = []
    top = _subfolders(root, "", ignored)
    split_names = [n for n in top if n in SPLITS]
    if split_names:
        if set(top) not in ({"train", "test"}, set(SPLITS)):
            raise DataSourceError(root.name, f"holds folders {', '.join(top)}", "split folders must be train and "
                                  "test (val optional) with class folders inside, or use class folders alone")
        layout = [(s, f"{s}/{c}") for s in SPLITS if s in top for c in _subfolders(root / s, s, ignored)]
    else:
        layout = [(None, c) for c in top]
    class_names = tuple(sorted({PurePosixPath(c).name for _, c in layout}))
    task = _check_task(task, len(class_names), root.name)
    check = _image_check()
    found: list[tuple[int, int, str, Entry]] = []
    order = {None: 0, **{s: i for i, s in enumerate(SPLITS)}}
    for split, class_dir in layout:
        files: list[str] = []
        _walk(root / class_dir, class_dir, frozenset({os.path.realpath(root)}), files, ignored)
        if not files:
            raise DataSourceError(class_dir, "class folder has no images", "add images or remove the folder")
        index = class_names.index(PurePosixPath(class_dir).name)
        for path in files:
            resolve_inside(root, path)
            if not check(root / path):
                raise DataSourceError(path, "is not an image file", "remove it or move it out of the dataset folder")
            found.append((order[split], index, path, Entry(path, (index,), split, None)))
    entries = tuple(e for *_, e in sorted(found, key=lambda t: t[:3]))
    return Listing("folder", root, task, class_names, entries, tuple(ignored))


# ----- CSV manifests ---------------------------------------------------------------------------------------


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
    """A manifest row's image path, normalised, checked to be an image inside root and not listed twice."""
    if not value:
        raise DataSourceError(where, "empty path", "give the image's path relative to the manifest's folder")
    real = resolve_inside(root, value, where)
    path = _relative(root, value)
    if path in seen:
        raise DataSourceError(where, f"{path!r} is listed twice (also {seen[path]})", "remove the duplicate")
    seen[path] = here
    if not _image_check()(real):
        raise DataSourceError(where, f"{path!r} is not an image file", "list image files only (PNG, JPEG, TIFF, DICOM)")
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


def list_manifest(csv_path: Path, task: str | None = None, classes: Sequence[str] | None = None) -> Listing:
    """A CSV manifest (see the module docstring); paths are relative to the CSV's folder."""
    csv_path, task = Path(csv_path), task_of(task)
    root, name = csv_path.parent, csv_path.name
    rows = _read_csv(csv_path)
    header = [h.strip() for h in rows[0]]

    def where(row: int) -> str:
        return f"{name}, row {row}"

    if "path" not in header:
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


# ----- by name ---------------------------------------------------------------------------------------------

SOURCES: dict[str, Callable[..., Listing]] = {"folder": list_folder, "manifest": list_manifest,
                                              "datalist": list_datalist}


def list_source(kind: str, path: Path, task: str | None = None) -> Listing:
    """The listing of a dataset of the named kind (folder, manifest, datalist)."""
    if kind not in SOURCES:
        raise UnknownNameError("data source", kind, SOURCES)
    return SOURCES[kind](Path(path), task)
