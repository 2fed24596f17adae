"""Where MedMNIST arrays come from: the bundled sample, a local root, or medmnist's download.

Root lookup for a flag: the run config's `data.root` (a folder), then $MEDMNIST_ROOT, then medmnist's
default root (~/.medmnist); the first one holding `<flag>.npz` wins. When none does, medmnist
downloads into the first of them (needs the internet). `data.root = "bundled"` uses the small subset
shipped inside this package, so the default scenario runs offline.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, UnknownNameError, UserError

log = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_ROOT = Path(__file__).parent / "sample"
SPLITS = ("train", "val", "test")


@functools.cache
def _medmnist_info():
    """medmnist's info module (INFO: every data set's task, labels and class; DEFAULT_ROOT).

    Loaded alone unless the package is imported already: the package's __init__ imports pandas and
    scikit-learn (over a second), which a coordinator that only checks site names needs neither of.
    Sites import the package when they load data.
    """
    if "medmnist" in sys.modules:
        return sys.modules["medmnist"].info
    path = Path(importlib.util.find_spec("medmnist").origin).with_name("info.py")
    spec = importlib.util.spec_from_file_location("_medmnist_info", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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


def _file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def candidate_roots(config_root: str) -> list[Path]:
    roots = []
    if config_root:
        roots.append(Path(config_root).expanduser())
    if os.environ.get("MEDMNIST_ROOT"):
        roots.append(Path(os.environ["MEDMNIST_ROOT"]).expanduser())
    roots.append(Path(_medmnist_info().DEFAULT_ROOT).expanduser())
    return roots


def load_medmnist(name: str, root: str = BUNDLED, size: int = 28) -> LoadedSet:
    """Load all three splits of a MedMNIST 2D set as arrays, saying where they came from."""
    import medmnist  # here, not at import time: see _medmnist_info

    flag = canonical_flag(name)
    info = medmnist.INFO[flag]
    if root == BUNDLED:
        if size != 28 or not (BUNDLED_ROOT / _file_name(flag, 28)).is_file():
            available = sorted(p.stem for p in BUNDLED_ROOT.glob("*.npz"))
            raise ConfigError(
                f"the bundled sample has no {flag} at {size} px (it has {available} at 28 px): "
                "set data.root to a folder with the MedMNIST files, or to '' to look up / download them"
            )
        chosen, download = BUNDLED_ROOT, False
        source = f"bundled sample of {flag} (a subset of MedMNIST v2, CC BY 4.0)"
        origin = f"bundled sample of {flag}"
    else:
        roots = candidate_roots(root)
        found = [r for r in roots if (r / _file_name(flag, size)).is_file()]
        chosen, download = (found[0], False) if found else (roots[0], True)
        source = f"{flag} from {chosen}" if found else f"{flag} downloaded by medmnist into {chosen}"
        origin = f"{flag} from local files" if found else f"{flag} downloaded by medmnist"
        if download:
            chosen.mkdir(parents=True, exist_ok=True)
            log.info("%s not found in %s: downloading", _file_name(flag, size), [str(r) for r in roots])
    cls = getattr(medmnist, info["python_class"])
    splits = {}
    for split in SPLITS:
        try:
            ds = cls(split=split, root=str(chosen), download=download, size=size)
        except Exception as err:  # medmnist raises bare RuntimeErrors; name the fix
            raise UserError(
                f"could not load {flag} ({split}) from {[str(r) for r in candidate_roots(root)]}: {err}. "
                "Put the MedMNIST .npz files in a folder and set data.root (or MEDMNIST_ROOT) to it, "
                "or use data.root='bundled' for the offline sample"
            ) from err
        labels = np.asarray(ds.labels, dtype=np.int64).reshape(len(ds.imgs), -1)
        splits[split] = SplitArrays(np.asarray(ds.imgs), labels)
    return LoadedSet(flag, info["task"], len(info["label"]), splits, source, origin)
