"""The fractal renderer in torch, so that making pretraining images keeps up with a GPU.

fl_medlego.pretrain.fractals draws every random number of a batch on the CPU (`_instance_draws`); this
module only does the arithmetic, on any device: the chaos game for the whole batch at once (one step
per point, every image in parallel), the fit into the canvas, and the colour averages by scatter-add.
float64 throughout, as numpy: the orbits and pixels are the same as numpy's on CPU and GPU alike; only
the order of the colour sums may differ, which moves a channel by at most one grey level.
"""

from __future__ import annotations

import numpy as np
import torch

from .fractals import _SKIP


def _orbit(params: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(params.shape[0], device=params.device)
    x = torch.zeros(params.shape[0], dtype=params.dtype, device=params.device)
    y = torch.zeros_like(x)
    points = torch.empty(choice.shape[0], params.shape[0], 2, dtype=params.dtype, device=params.device)
    for t in range(choice.shape[0]):
        p = params[rows, choice[t]]
        x, y = p[:, 0] * x + p[:, 1] * y + p[:, 4], p[:, 2] * x + p[:, 3] * y + p[:, 5]
        points[t, :, 0], points[t, :, 1] = x, y
    return points[_SKIP:]


def _pixels(points: torch.Tensor, size: int, margin: float = 0.08) -> torch.Tensor:
    """As fractals._pixels: the attractor fitted into the canvas, aspect kept."""
    low, high = points.amin(0), points.amax(0)
    extent = (high - low).amax(-1, keepdim=True) + 1e-9
    unit = (points - low) / extent
    unit = margin + unit * (1 - 2 * margin) + (1 - 2 * margin) * (1 - (high - low) / extent) / 2
    ij = (unit * size).to(torch.int64).clamp(0, size - 1)
    return ij[..., 1] * size + ij[..., 0]


@torch.no_grad()
def render_draws(draws: dict[str, np.ndarray], size: int, device: str | torch.device) -> np.ndarray:
    """uint8 images (B, size, size, 3) of one batch of draws, computed on `device`."""
    on = torch.device(device)
    params = torch.as_tensor(draws["params"], dtype=torch.float64, device=on)
    choice = torch.as_tensor(draws["choice"], dtype=torch.int64, device=on)
    palette = torch.as_tensor(draws["palette"], dtype=torch.float64, device=on)
    background = torch.as_tensor(draws["background"], dtype=torch.float64, device=on)
    batch = params.shape[0]
    flat = _pixels(_orbit(params, choice), size)  # (n, B)
    kept = choice[_SKIP:]
    colours = palette[torch.arange(batch, device=on)[None, :], kept]  # (n, B, 3)
    index = (flat + torch.arange(batch, device=on)[None, :] * size * size).reshape(-1)
    cells = batch * size * size
    counts = torch.zeros(cells, dtype=torch.float64, device=on).index_add_(
        0, index, torch.ones_like(index, dtype=torch.float64))
    sums = torch.zeros(cells, 3, dtype=torch.float64, device=on).index_add_(0, index, colours.reshape(-1, 3))
    counts, sums = counts.reshape(batch, size, size, 1), sums.reshape(batch, size, size, 3)
    image = torch.where(counts > 0, sums / counts.clamp_min(1), background)
    return (image * 255).round().to(torch.uint8).cpu().numpy()
