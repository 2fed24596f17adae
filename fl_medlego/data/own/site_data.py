"""A site's shards from its own images: the registered (or named) dataset, decoded once, split as recorded.

Which dataset: the one the node names (`--node-config "dataset='NAME'"`, registered there), else the one the
sites spec names (`cxr=dataset:NAME`, or `cxr=folder:PATH` / `manifest:PATH` / `datalist:PATH`, read in
place). A dataset named in place has no record on disk: it is listed and split in memory the same way every
time (seed 0, 70/10/20, by patient when the data says who), so it too is never reshuffled by a later run.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ...errors import UserError
from ...seeds import data_seed
from ..partition import subsample
from ..sites import NODE, SiteData, SiteSpec, Split
from .cache import decoded
from .registry import DatasetRecord, build_record, load_record, verify

SPLIT_NAMES = ("train", "val", "test")


def record_for(site: SiteSpec, node_dataset: str | None = None) -> DatasetRecord:
    """The dataset record a site trains on (see the module docstring); refuses a site that has none."""
    if node_dataset:
        return load_record(node_dataset)
    source, _, where = site.source.partition(":")
    if source == "dataset":
        return load_record(where)
    if site.source == NODE or not site.source:
        raise UserError(f"site {site.name!r} has no data here: it is no MedMNIST set and its node names no dataset. "
                        f"At a hospital: register the images (`fl-medlego site data add {site.name} --source folder "
                        f"--path DIR`) and start the SuperNode with --node-config \"dataset='{site.name}'\"; in a "
                        f"simulation: write the site as {site.name}=folder:DIR (or manifest:CSV) in `sites`")
    record = _in_place_record(site.name, source, where)
    try:
        verify(record)
    except UserError:  # its files changed since this process listed them: list them again
        _in_place_record.cache_clear()
        record = _in_place_record(site.name, source, where)
    return record


@functools.lru_cache(maxsize=8)
def _in_place_record(name: str, source: str, where: str) -> DatasetRecord:
    # Simulated nodes serve many messages in one process: list and split each named dataset once.
    record, _ = build_record(name, source, Path(where))
    return record


def origin_text(record: DatasetRecord) -> str:
    """What the site may tell the coordinator about its data: no path, no file name."""
    return f"own {record.source} dataset: {len(record.files)} images, {record.num_classes} classes"


def load_own_site(site: SiteSpec, record: DatasetRecord, size: int, max_train: int = 0, max_eval: int = 0,
                  seed: int = 0, progress: Callable[[int, int], None] | None = None) -> SiteData:
    """The site's train / val / test from the decoded cache, capped (0 = no cap) by seed like MedMNIST shards.

    Uncapped splits are views of the memory-mapped cache: training reads a batch at a time from disk."""
    verify(record)
    cached = decoded(record, size, progress=progress)
    base_seed = data_seed(seed, site.data_key)
    shards = {}
    for s, split in enumerate(SPLIT_NAMES):
        rows = cached.slices[split]
        cap = max_train if split == "train" else max_eval
        idx = subsample(np.arange(rows.start, rows.stop), cap, base_seed + 10 + s)
        if len(idx) == rows.stop - rows.start:
            images = cached.images[rows]  # a view of the read-only map: nothing is read yet
        else:
            images = np.ascontiguousarray(cached.images[idx])
        with warnings.catch_warnings():  # a read-only map: nothing writes to a site's images (batches are copies)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(images)
        shards[split] = Split(tensor, torch.from_numpy(np.ascontiguousarray(cached.labels[idx])))
    source = f"own {record.source} dataset {record.name!r} at {record.path}"
    return SiteData(site, record.task, record.num_classes, source, origin_text(record), shards["train"],
                    shards["val"], shards["test"], tuple(record.class_names), record.prompt_template)
