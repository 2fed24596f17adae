"""What a hospital's dataset holds, listed without decoding any image: its files, labels, splits and patients.

Three shapes, each read the way its users expect:

- a folder `ROOT/<class>/<files>` or `ROOT/{train,val,test}/<class>/<files>`: class names are the sorted
  folder names, as torchvision's ImageFolder has them;
- a CSV manifest: a `path` column and a `label` column (a class name or an integer index), or one 0/1 column
  per finding for a multi-label set; optional `split` and `patient` columns; rows kept in the CSV's order;
- a datalist JSON in the shape of MONAI's / the Medical Segmentation Decathlon's: `{"training": [{"image": ...,
  "label": ...}], "validation": [...], "test": [...]}`.

This module holds what every shape shares (entries, listings, the path rules, the task) and the folder reader;
the two shapes that list their files (the CSV manifest and the datalist) are read in `datalist`, and their
readers stay importable from here (`sources.list_manifest`, `sources.list_datalist`).

Every file must lie inside the dataset's folder (the folder, or the CSV's / JSON's folder), links resolved:
a manifest that names `../x.png` or a link out of the folder is refused, so registering a dataset never reads
files its operator did not put there. Every mistake is a `DataSourceError` naming the file (and row) and the fix.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ...errors import UnknownNameError, UserError
from .splits import SPLITS

if TYPE_CHECKING:  # the names type checkers see here; at run time `__getattr__` (at the end) finds them
    from .datalist import DATALIST_KEYS, list_datalist, list_manifest  # noqa: F401

# MedMNIST's task strings (fl_medlego.metrics.MULTI_LABEL is the third), so training treats both alike.
MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL = "multi-class", "binary-class", "multi-label, binary-class", \
    "ordinal-regression"
TASKS = (MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL)
TASK_WORDS = {"multi-class": MULTI_CLASS, "binary": BINARY, "multi-label": MULTI_LABEL}  # the command line's words


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
    if "\0" in relative:  # no file system allows it; os.path would raise ValueError
        raise DataSourceError(where, f"path {relative!r} holds a NUL character", "fix the path")
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


def _scan(folder: Path, rel: str) -> list[tuple[str, str, str]]:
    """(name, path relative to the root, entry type) of each entry of `folder`, sorted by name; the type is "dir",
    "file" or "other" (links followed: a broken link is "other"). A link loop or an unreadable entry is an error."""
    where = rel or "the dataset folder"
    try:
        with os.scandir(folder) as found:
            items = sorted(found, key=lambda item: item.name)
    except OSError as err:
        raise DataSourceError(where, f"cannot be listed ({err.strerror})", "check its permissions") from None
    out = []
    for item in items:
        path = f"{rel}/{item.name}" if rel else item.name
        if item.name.startswith("."):
            out.append((item.name, path, "hidden"))  # never followed: a hidden link may point anywhere
            continue
        try:
            entry_type = "dir" if item.is_dir() else "file" if item.is_file() else "other"
        except OSError as err:  # is_dir / is_file report a missing target as False, anything else raises
            if err.errno == errno.ELOOP:
                raise DataSourceError(path, "is a symlink loop", "fix or remove the link") from None
            raise DataSourceError(path, f"cannot be read ({err.strerror})", "check its permissions") from None
        out.append((item.name, path, entry_type))
    return out


def _walk(folder: Path, rel: str, ancestors: frozenset[str], files: list[str], ignored: list[str]) -> None:
    """Every file under `folder` (links followed), as paths relative to the dataset root; hidden ones go to
    `ignored`. A link back to a folder it is inside is a loop, an error naming the link."""
    real = os.path.realpath(folder)
    if real in ancestors:
        raise DataSourceError(rel, "is a symlink loop (a link to a folder it is inside)", "remove the link")
    ancestors = ancestors | {real}
    for _, path, entry_type in _scan(folder, rel):
        if entry_type == "hidden":
            ignored.append(path)
        elif entry_type == "dir":
            _walk(folder / PurePosixPath(path).name, path, ancestors, files, ignored)
        elif entry_type == "file":
            files.append(path)
        else:
            raise DataSourceError(path, "is a broken link or not a regular file", "remove it or fix its target")


def _subfolders(folder: Path, rel: str, ignored: list[str]) -> list[str]:
    """The visible folders directly in `folder`; a visible file there is an error (it belongs to no class)."""
    names = []
    for name, path, entry_type in _scan(folder, rel):
        if entry_type == "hidden":
            ignored.append(path)
        elif entry_type == "dir":
            names.append(name)
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


# ----- by name ---------------------------------------------------------------------------------------------

SOURCE_KINDS = ("folder", "manifest", "datalist")
_MOVED = frozenset({"list_manifest", "list_datalist", "DATALIST_KEYS"})  # defined in .datalist


def _readers() -> dict[str, Callable[..., Listing]]:
    from .datalist import list_datalist, list_manifest  # imported here: .datalist builds on this module

    return {"folder": list_folder, "manifest": list_manifest, "datalist": list_datalist}


def list_source(kind: str, path: Path, task: str | None = None) -> Listing:
    """The listing of a dataset of the named kind (folder, manifest, datalist)."""
    if kind not in SOURCE_KINDS:
        raise UnknownNameError("data source", kind, SOURCE_KINDS)
    return _readers()[kind](Path(path), task)


def __getattr__(name: str) -> object:
    """The list readers (and `SOURCES`, the readers by kind) where they were before they moved to .datalist."""
    if name in _MOVED:
        from . import datalist

        return getattr(datalist, name)
    if name == "SOURCES":
        return _readers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
