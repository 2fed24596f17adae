"""Procedural images with natural-image statistics, no data needed: dead leaves and coloured 1/f noise.

Baradad et al., "Learning to See by Looking at Noise" (NeurIPS 2021): images drawn from simple random
processes, learnt with a self-supervised objective, transfer far better than their looks suggest; the
dead-leaves model (occluding shapes with power-law sizes) and spectrum-shaped noise are two of its families.
"""

from __future__ import annotations

import numpy as np


def dead_leaves(count: int, rng: np.random.Generator, size: int = 32, shapes: int = 60) -> np.ndarray:
    """uint8 (count, size, size, 3): discs and squares of random colour, radii from a power law, painted in order."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.broadcast_to(rng.uniform(0, 1, (count, 1, 1, 3)), (count, size, size, 3)).copy()
    r_min, r_max = 1.0, size / 2
    for _ in range(shapes):
        # density ~ r^-3 (scale invariance), by inverse transform sampling
        u = rng.uniform(0, 1, count)
        radius = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
        cx, cy = rng.uniform(-4, size + 4, (2, count))
        square = rng.random(count) < 0.5
        dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
        r = radius[:, None, None]
        inside = np.where(square[:, None, None], np.maximum(abs(dx), abs(dy)) < r, dx**2 + dy**2 < r**2)
        colour = rng.uniform(0, 1, (count, 1, 1, 3))
        images = np.where(inside[..., None], colour, images)
    return (images * 255).round().astype(np.uint8)


def spectral_noise(count: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 (count, size, size, 3): random-phase noise with a 1/f^a amplitude spectrum, a in [1, 3], per channel
    mixed by a random colour matrix (so channels correlate, as in natural images)."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    exponent = rng.uniform(1.0, 3.0, (count, 1, 1, 1))
    amplitude = radius[None, :, :, None] ** -exponent
    amplitude[:, 0, 0, :] = 0.0
    phase = rng.uniform(0, 2 * np.pi, (count, size, size, 3))
    noise = np.fft.ifft2(amplitude * np.exp(1j * phase), axes=(1, 2)).real
    noise = np.einsum("bhwc,bcd->bhwd", noise, rng.normal(0, 1, (count, 3, 3)))
    low = noise.min((1, 2, 3), keepdims=True)
    high = noise.max((1, 2, 3), keepdims=True)
    return ((noise - low) / (high - low + 1e-9) * 255).round().astype(np.uint8)


def procedural_dataset(count: int, seed: int, size: int = 32, batch: int = 1024) -> np.ndarray:
    """Half dead leaves, half spectral noise, shuffled: uint8 (count, size, size, 3)."""
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        half = n // 2
        parts += [dead_leaves(half, rng, size), spectral_noise(n - half, rng, size)]
    images = np.concatenate(parts)
    return images[rng.permutation(len(images))]
