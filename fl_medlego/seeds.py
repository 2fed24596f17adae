"""How the project derives one seeded stream from another: named, so the same mixing is used everywhere.

Each derived seed is `run seed * STRIDE + offset`: different strides keep the streams of different
purposes apart, and the offset (a CRC32 of a name, or a step) separates sites, modalities and steps.
The values are those the project has always used, so that every result stays reproducible.
"""

from __future__ import annotations

import zlib

SITE_STRIDE = 7919  # a site's adapter init and head: seed * SITE_STRIDE + crc32(site name)
DATA_STRIDE = 1_000_003  # a modality's partition and caps: seed * DATA_STRIDE + crc32(flag) + split offset
STEP_STRIDE = 1_000_003  # pretraining: one generator per step, seed * STEP_STRIDE + step


def name_offset(name: str) -> int:
    """A stable offset for a name (the same on every machine and Python run, unlike hash())."""
    return zlib.crc32(name.encode())


def site_seed(seed: int, site: str) -> int:
    return seed * SITE_STRIDE + name_offset(site)


def data_seed(seed: int, flag: str) -> int:
    return seed * DATA_STRIDE + name_offset(flag)


def step_seed(seed: int, step: int) -> int:
    return seed * STEP_STRIDE + step
