"""How the project derives one seeded stream from another: named, so the same mixing is used everywhere.

Each derived seed is `run seed * STRIDE + offset`: different strides keep the streams of different
purposes apart, and the offset (a CRC32 of a name, or a step) separates sites, modalities and steps.
The values are those the project has always used, so that every result stays reproducible.

`global_draws_from(seed)` runs a block whose draws from the process's own generators (dropout in a
tower, a library's initialisation) come from a derived seed, and gives the caller its streams back
afterwards: a site's training is then the same whatever ran before it in the process.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

SITE_STRIDE = 7919  # a site's adapter init and head: seed * SITE_STRIDE + crc32(site name)
DATA_STRIDE = 1_000_003  # a modality's partition and caps: seed * DATA_STRIDE + crc32(flag) + split offset
STEP_STRIDE = 1_000_003  # pretraining: one generator per step, seed * STEP_STRIDE + step
ROUND_STRIDE = 1_000_003  # a site's training in a round: site_seed * ROUND_STRIDE + round
SEED_SPAN = 2**63  # derived seeds are folded into [0, 2**63): every torch, numpy and Python generator takes them


def name_offset(name: str) -> int:
    """A stable offset for a name (the same on every machine and Python run, unlike hash())."""
    return zlib.crc32(name.encode())


def site_seed(seed: int, site: str) -> int:
    return seed * SITE_STRIDE + name_offset(site)


def data_seed(seed: int, flag: str) -> int:
    return seed * DATA_STRIDE + name_offset(flag)


def step_seed(seed: int, step: int) -> int:
    return seed * STEP_STRIDE + step


def training_seed(seed: int, site: str, server_round: int) -> int:
    """The seed of one site's global draws in one round (from 1): round 2 does not replay round 1's dropout.

    Apart from site_seed's stream (the site's adapter init and head), which stays as it always was.
    """
    if server_round < 1:
        raise ValueError(f"server rounds count from 1, got {server_round}: pass the round being trained")
    return (site_seed(seed, site) * ROUND_STRIDE + server_round) % SEED_SPAN


@contextmanager
def global_draws_from(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Inside: torch's generator (the CPU's, and `device`'s when it is a GPU), numpy's and Python's draw
    from `seed`. After: each is back where the caller left it, as if the block had drawn nothing."""
    gpu = device is not None and device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None
    with torch.random.fork_rng(devices=[index] if gpu else [], device_type="cuda"):
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            torch.default_generator.manual_seed(seed)
            if gpu:
                torch.cuda.default_generators[index].manual_seed(seed)
            np.random.seed(seed % 2**32)  # numpy's global generator takes 32 bits
            random.seed(seed)
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
