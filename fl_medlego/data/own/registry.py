"""The node's register of its own datasets: one JSON record per name, written once by `site data add`.

A record is what a site needs to train on a dataset again and again without looking at anything twice:
where it is, its task and class names in index order, the split of every file (made once, never
reshuffled), counts per split and class, and a fingerprint of the files. The fingerprint covers each
file's relative path, size and modification time with its label and split: cheap to recompute at every
start, so that a registered file changed or removed after registration is noticed before training (a file
added to the folder is not: it is not in the record, and is not trained on until the dataset is registered again).

The register lives in $FL_MEDLEGO_DATASETS, else ~/.local/share/fl-medlego/datasets. Nothing in it leaves
the node; the coordinator learns a site's number of images and classes (`site_data.origin_text`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import UnknownNameError, UserError
from ...files import write_json_atomic
from .sources import Entry, Listing, list_source, resolve_inside
from .splits import SPLITS, assign_splits

REGISTRY_ENV = "FL_MEDLEGO_DATASETS"
FORMAT = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CLASSES_FILE = "classes.txt"  # beside a manifest: the class names in index order (one per line)


def registry_folder(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "fl-medlego" / "datasets"


@dataclass(frozen=True)
class DatasetFile:
    path: str  # relative to the dataset's root
    split: str
    labels: tuple[int, ...]
    patient: str | None = None


@dataclass
class DatasetRecord:
    name: str
    source: str  # folder | manifest | datalist
    path: str  # the folder, CSV or JSON, absolute
    root: str  # the folder file paths are relative to
    task: str  # a MedMNIST task string
    class_names: list[str]
    channels: int  # 1 grey, 3 colour: what every image is decoded to
    fingerprint: str
    counts: dict[str, dict[str, int]]
    split_rule: dict  # {"from": "data"} or {"from": "made", "fractions": [...], "seed": N}
    files: list[DatasetFile]
    frame: int | None = None  # the frame of multi-frame DICOM files, when chosen at registration
    prompt_template: str = ""  # the cross-modal kind: how a class name becomes a prompt ("" = the kind's default)
    registered: str = ""
    format: int = FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_files(self, split: str) -> list[DatasetFile]:
        return [f for f in self.files if f.split == split]

    def to_json(self) -> dict:
        data = asdict(self)
        data["files"] = [[f.path, f.split, list(f.labels), f.patient] for f in self.files]
        return data

    @classmethod
    def from_json(cls, data: dict, where: Path) -> DatasetRecord:
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, this version reads {FORMAT}")
            files = [DatasetFile(p, s, tuple(int(v) for v in labels), patient)
                     for p, s, labels, patient in data["files"]]
            return cls(**{**data, "files": files})
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"the dataset record {where} is damaged ({err}): register the dataset again with "
                            "`fl-medlego site data add NAME --replace ...`") from err


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise UserError(f"dataset name {name!r}: use letters, digits, '-', '_' or '.', starting with a letter or "
                        "digit (at most 64 characters), e.g. cxr or chest-xray")
    return name


def record_path(name: str, registry: str | Path | None = None) -> Path:
    return registry_folder(registry) / f"{check_name(name)}.json"


def fingerprint(root: Path, files: Sequence[DatasetFile], class_names: Sequence[str], task: str) -> str:
    """A hash of what the site trains on, from each file's stat (no file is read): see the module docstring."""
    digest = hashlib.sha256(json.dumps([task, list(class_names)]).encode())
    for f in files:
        stat = resolve_inside(root, f.path).stat()
        digest.update(json.dumps([f.path, f.split, list(f.labels), stat.st_size, stat.st_mtime_ns]).encode())
    return digest.hexdigest()


def manifest_classes(path: Path) -> list[str] | None:
    """The class order a manifest's `classes.txt` fixes (exports write one), else None (sorted labels)."""
    classes = path.parent / CLASSES_FILE
    if not (path.is_file() and classes.is_file()):
        return None
    try:
        text = classes.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{CLASSES_FILE} beside {path.name}: cannot be read as text ({err}): save it as UTF-8, one "
                        "class name per line") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def describe(source: str, path: Path, task: str | None = None) -> Listing:
    """List a dataset as its source kind reads it (a manifest's classes.txt fixes its class order)."""
    classes = manifest_classes(path) if source == "manifest" else None
    if classes is not None:
        from .sources import list_manifest

        return list_manifest(path, task, classes=classes)
    return list_source(source, path, task)


def build_record(name: str, source: str, path: str | Path, task: str | None = None,
                 fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0, frame: int | None = None,
                 prompt_template: str = "") -> tuple[DatasetRecord, Listing]:
    """The record of a dataset (nothing written): its listing, each file's split and the counts."""
    from .decode import peek_channels

    if prompt_template and prompt_template.count("{}") != 1:
        raise UserError(f"--prompt-template {prompt_template!r} must hold {{}} once, where the class name goes, "
                        "e.g. 'a chest x-ray showing {}.'")
    path = Path(path).expanduser().resolve()
    listing = describe(source, path, task)
    splits = assign_splits(listing.entries, fractions, seed)
    files = [DatasetFile(e.path, s, tuple(e.labels), e.patient) for e, s in zip(listing.entries, splits)]
    root = Path(listing.root)
    channels = max((peek_channels(resolve_inside(root, f.path), label=f.path) for f in files), default=1)
    rule = ({"from": "data"} if all(e.split for e in listing.entries)
            else {"from": "made", "fractions": list(fractions), "seed": seed})
    record = DatasetRecord(
        name=check_name(name), source=listing.source, path=str(path), root=str(root), task=listing.task,
        class_names=list(listing.class_names), channels=channels,
        fingerprint=fingerprint(root, files, listing.class_names, listing.task),
        counts=count_by_split(files, listing.class_names, listing.task), split_rule=rule, files=files, frame=frame,
        prompt_template=prompt_template, registered=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return record, listing


def count_by_split(files: Sequence[DatasetFile], class_names: Sequence[str], task: str) -> dict[str, dict[str, int]]:
    """Images per split and class (multi-label: positives per finding)."""
    from ...metrics import MULTI_LABEL

    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        tally: Counter = Counter()
        for f in (f for f in files if f.split == split):
            if task == MULTI_LABEL:
                tally.update(class_names[i] for i, v in enumerate(f.labels) if v)
            else:
                tally[class_names[f.labels[0]]] += 1
        counts[split] = {c: tally.get(c, 0) for c in class_names}
    return counts


def save_record(record: DatasetRecord, registry: str | Path | None = None, replace: bool = False) -> Path:
    target = record_path(record.name, registry)
    if target.exists() and not replace:
        raise UserError(f"a dataset named {record.name!r} is registered already ({target}): pick another name, "
                        f"or add --replace to register it again (its split is made anew unless the data has one)")
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(target, record.to_json(), indent=None)


def load_record(name: str, registry: str | Path | None = None) -> DatasetRecord:
    target = record_path(name, registry)
    if not target.is_file():
        raise UnknownNameError("registered dataset", name, list_names(registry))
    try:
        data = json.loads(target.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"could not read the dataset record {target} ({err}): register the dataset again with "
                        "`fl-medlego site data add NAME --replace ...`") from err
    return DatasetRecord.from_json(data, target)


def list_names(registry: str | Path | None = None) -> list[str]:
    folder = registry_folder(registry)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def remove_record(name: str, registry: str | Path | None = None) -> Path:
    target = record_path(name, registry)
    if not target.is_file():
        raise UnknownNameError("registered dataset", name, list_names(registry))
    target.unlink()
    return target


def verify(record: DatasetRecord) -> None:
    """Refuse a dataset whose files changed since registration (before anything trains on them)."""
    root = Path(record.root)
    if not root.is_dir():
        raise UserError(f"dataset {record.name!r}: its folder {root} is gone: restore it, or register the data "
                        f"where it is now with `fl-medlego site data add {record.name} --replace ...`")
    try:
        now = fingerprint(root, record.files, record.class_names, record.task)
    except (OSError, UserError) as err:
        raise UserError(f"dataset {record.name!r} changed since it was registered ({err}): restore the file, or "
                        f"register it again with `fl-medlego site data add {record.name} --replace ...`") from err
    if now != record.fingerprint:
        raise UserError(f"dataset {record.name!r} changed since it was registered (a file was modified): restore "
                        f"it, or register it again with `fl-medlego site data add {record.name} --replace ...` "
                        "(a new split unless the data has one)")


def entries_of(record: DatasetRecord) -> list[Entry]:
    return [Entry(f.path, f.labels, f.split, f.patient) for f in record.files]
