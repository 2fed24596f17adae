"""Where MedMNIST arrays come from: the bundled sample, the one folder a user names, or a download.

`data.root` (a node's `data-root` overrides it) decides, and nothing else is searched:

- `bundled`: the small subset shipped inside this package, so the default scenario runs offline;
- a folder: exactly that folder. A missing folder or file is an error naming it; nothing is created
  or downloaded, so a hospital node never trains on data other than what its operator named;
- `""`: $MEDMNIST_ROOT if set, else ~/.medmnist; a set missing there is downloaded there (needs the
  internet), each file once, only the ones a run reads.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, UnknownNameError, UserError

log = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_ROOT = Path(__file__).parent / "sample"
DOWNLOAD = ""  # the data root that reads $MEDMNIST_ROOT or ~/.medmnist and downloads what is missing there
SPLITS = ("train", "val", "test")


@functools.cache
def _medmnist_info():
    """medmnist's info module (INFO: every data set's task, labels, class, URL and MD5).

    Loaded alone unless the package is imported already: the package's __init__ imports pandas and
    scikit-learn (over a second), which a coordinator that only checks site names needs neither of.
    Loaded alone, its `DEFAULT_ROOT = get_default_root()` line is not run: it creates ~/.medmnist, and a
    dry run creates nothing (the default root is `download_folder`'s business).
    """
    if "medmnist" in sys.modules:
        return sys.modules["medmnist"].info
    path = Path(importlib.util.find_spec("medmnist").origin).with_name("info.py")
    source = path.read_text().replace("DEFAULT_ROOT = get_default_root()", "DEFAULT_ROOT = None")
    spec = importlib.util.spec_from_file_location("_medmnist_info", path)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def canonical_flag(name: str) -> str:
    """'blood' or 'bloodmnist' -> 'bloodmnist'; an unknown name lists the known ones."""
    flag = name.strip().lower()
    flag = flag if flag.endswith("mnist") else flag + "mnist"
    info = _medmnist_info().INFO
    if flag not in info or flag.endswith("3d"):
        known = sorted(k.removesuffix("mnist") for k in info if not k.endswith("3d"))
        raise UnknownNameError("MedMNIST 2D set", name, known)
    return flag


@dataclass
class SplitArrays:
    images: np.ndarray  # uint8, (N, H, W) or (N, H, W, 3)
    labels: np.ndarray  # int64, (N, L): L = 1 for single-label tasks


@dataclass
class LoadedSet:
    flag: str
    task: str  # medmnist task string, e.g. "multi-class"
    num_classes: int  # logits the head needs
    splits: dict[str, SplitArrays]
    source: str  # human-readable: where the arrays came from (with the folder: for the site's own logs)
    origin: str  # the same without any path: what a site may tell the coordinator


@dataclass(frozen=True)
class DataLocation:
    """Where one set's file is under a data root, found without creating or downloading anything."""

    flag: str
    file: Path
    present: bool  # False only under the download root: the file would be downloaded there
    bundled: bool


def _file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _url_and_md5(flag: str, size: int) -> tuple[str, str]:
    suffix = "" if size == 28 else f"_{size}"
    info = _medmnist_info().INFO[flag]
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def download_folder() -> Path:
    """The folder the download root ("") reads and downloads into: $MEDMNIST_ROOT, else ~/.medmnist."""
    return Path(os.environ.get("MEDMNIST_ROOT") or Path.home() / ".medmnist").expanduser()


def locate_medmnist(name: str, root: str = BUNDLED, size: int = 28) -> DataLocation:
    """The file a data root gives for a set; refuses a root that cannot give it (see the module's docstring)."""
    flag = canonical_flag(name)
    file_name = _file_name(flag, size)
    if root == BUNDLED:
        if size != 28 or not (BUNDLED_ROOT / file_name).is_file():
            available = sorted(p.stem for p in BUNDLED_ROOT.glob("*.npz"))
            raise ConfigError(
                f"the bundled sample has no {flag} at {size} px (it has {available} at 28 px): "
                "set data.root to a folder with the MedMNIST files, or to '' to download them"
            )
        return DataLocation(flag, BUNDLED_ROOT / file_name, True, True)
    if root == DOWNLOAD:
        file = download_folder() / file_name
        return DataLocation(flag, file, file.is_file(), False)
    folder = Path(root).expanduser()
    fix = (f"put {file_name} there (medmnist's {_url_and_md5(flag, size)[0]}), or set the data root to '' "
           "to download it into $MEDMNIST_ROOT or ~/.medmnist")
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"data folder {folder} {state} (only the named folder is read): create it and {fix}")
    if not (folder / file_name).is_file():
        raise UserError(f"{file_name} is not in the data folder {folder} (only that folder is read): {fix}")
    return DataLocation(flag, folder / file_name, True, False)


def download_medmnist(flag: str, size: int, folder: Path) -> Path:
    """Fetch one MedMNIST file into `folder` from medmnist's URL, checked against its MD5; the one place
    that downloads. Written under a temporary name and renamed, so a broken download leaves no file."""
    from torchvision.datasets.utils import download_url

    url, md5 = _url_and_md5(flag, size)
    target = folder / _file_name(flag, size)
    partial = folder / f".{target.name}.part"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        download_url(url, root=str(folder), filename=partial.name, md5=md5)
        os.replace(partial, target)
    except Exception as err:  # network, disk or checksum: the user's to fix, by hand if need be
        partial.unlink(missing_ok=True)
        raise UserError(f"could not download {target.name} into {folder} ({err}): download {url} (MD5 {md5}) "
                        "there by hand, or set data.root to a folder holding it") from err
    return target


def _read_splits(file: Path) -> dict[str, SplitArrays]:
    try:
        with np.load(file) as arrays:
            splits = {}
            for split in SPLITS:
                images = np.asarray(arrays[f"{split}_images"])
                labels = np.asarray(arrays[f"{split}_labels"], dtype=np.int64).reshape(len(images), -1)
                splits[split] = SplitArrays(images, labels)
            return splits
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"could not read {file} ({err}): replace it with the MedMNIST file of that name "
                        "(train/val/test _images and _labels)") from err


def load_medmnist(name: str, root: str = BUNDLED, size: int = 28) -> LoadedSet:
    """Load all three splits of a MedMNIST 2D set as arrays, saying where they came from."""
    where = locate_medmnist(name, root, size)
    flag, folder = where.flag, where.file.parent
    if where.bundled:
        source = f"bundled sample of {flag} (a subset of MedMNIST v2, CC BY 4.0)"
        origin = f"bundled sample of {flag}"
    elif where.present:
        source, origin = f"{flag} from {folder}", f"{flag} from local files"
    else:  # only the download root ("") gets here: the configuration asked for the download
        log.info("%s not in %s: downloading", where.file.name, folder)
        download_medmnist(flag, size, folder)
        source, origin = f"{flag} downloaded from MedMNIST into {folder}", f"{flag} downloaded from MedMNIST"
    info = _medmnist_info().INFO[flag]
    return LoadedSet(flag, info["task"], len(info["label"]), _read_splits(where.file), source, origin)
