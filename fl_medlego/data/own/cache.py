"""Decode a dataset once into a node-local cache of resized uint8 arrays, then read it memory-mapped.

The first pass decodes every file (in one process or several) straight into a memory-mapped .npy file, in
the record's order, so a dataset never sits in RAM at once: 100,000 images at 224 px are 15 GB on disk and a
batch in memory. The folder is keyed by the dataset's fingerprint, the image size, the channels and the
DICOM frame, and appears under its final name only once complete (written in a temporary sibling and
renamed), so an interrupted first pass leaves no cache that a later run could trust.

The cache lives in $FL_MEDLEGO_CACHE, else ~/.cache/fl-medlego/decoded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...files import atomic_path
from .registry import DatasetRecord
from .sources import resolve_inside

log = logging.getLogger(__name__)

CACHE_ENV = "FL_MEDLEGO_CACHE"
CHUNK = 64  # images a worker decodes per task: big enough to amortise the hand-over, small for a smooth bar


def cache_folder() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fl-medlego" / "decoded"


@dataclass
class CachedSet:
    """A decoded dataset: images (N, size, size, C) uint8 memory-mapped read-only, labels (N, L) int64, in the
    record's file order; `slices` gives each split's rows (a split's files are contiguous)."""

    images: np.ndarray
    labels: np.ndarray
    slices: dict[str, slice]
    folder: Path


def cache_key(record: DatasetRecord, size: int) -> str:
    frame = "" if record.frame is None else f"-frame{record.frame}"
    return f"{record.name}-{record.fingerprint[:16]}-{size}px-{record.channels}c{frame}"


def _ordered(record: DatasetRecord) -> list:
    """The record's files with each split contiguous (train, val, test), keeping the record's order within."""
    return [f for split in ("train", "val", "test") for f in record.files if f.split == split]


def _decode_chunk(args: tuple[str, list[str], int, int, int | None]) -> np.ndarray:
    from .decode import decode_image

    root, paths, size, channels, frame = args
    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    for i, relative in enumerate(paths):
        out[i] = decode_image(resolve_inside(Path(root), relative), size, channels, frame=frame, label=relative)
    return out


def build_cache(record: DatasetRecord, size: int, target: Path, processes: int = 1,
                progress: Callable[[int, int], None] | None = None) -> None:
    """Decode every file of `record` into `target` (a folder that must not exist yet)."""
    files = _ordered(record)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(files), size, size, record.channels))
        width = max(len(f.labels) for f in files) if files else 1
        np.save(tmp / "labels.npy", np.asarray([f.labels for f in files], dtype=np.int64).reshape(len(files), width))
        chunks = [(record.root, [f.path for f in files[i:i + CHUNK]], size, record.channels, record.frame)
                  for i in range(0, len(files), CHUNK)]
        done = 0
        with _pool(processes) as pool:
            for start, block in zip(range(0, len(files), CHUNK), pool.map(_decode_chunk, chunks)):
                images[start:start + len(block)] = block
                done += len(block)
                if progress:
                    progress(done, len(files))
        images.flush()
        del images
        counts = {s: sum(f.split == s for f in files) for s in ("train", "val", "test")}
        (tmp / "meta.json").write_text(json.dumps({"dataset": record.name, "fingerprint": record.fingerprint,
                                                   "size": size, "channels": record.channels, "counts": counts}))


class _InProcess:
    """`map` in this process: one process needs no pool (and no pickling)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _pool(processes: int):
    return _InProcess() if processes <= 1 else ProcessPoolExecutor(processes)


def open_cache(folder: Path) -> CachedSet:
    meta = json.loads((folder / "meta.json").read_text())
    # Read-only: pages are read from disk as batches touch them. (A private copy-on-write map, mode "c", is
    # counted against memory: a cache larger than RAM and swap could not be opened.)
    images = np.load(folder / "images.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    start, slices = 0, {}
    for split in ("train", "val", "test"):
        slices[split] = slice(start, start + meta["counts"][split])
        start += meta["counts"][split]
    return CachedSet(images, labels, slices, folder)


def decoded(record: DatasetRecord, size: int, processes: int = 1, cache: Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> CachedSet:
    """The dataset decoded at `size`: read from the cache, or decoded into it first (the first pass)."""
    folder = (cache or cache_folder()) / cache_key(record, size)
    if not (folder / "meta.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():  # a folder without meta.json is no cache of ours: never trust or half-reuse it
            shutil.rmtree(folder)
        log.info("decoding %d images of dataset %s at %d px into %s (once)", len(record.files), record.name, size,
                 folder)
        build_cache(record, size, folder, processes, progress)
    return open_cache(folder)
