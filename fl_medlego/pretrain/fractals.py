"""FractalDB-style images: each category is an iterated function system (IFS), each image a jittered render.

Kataoka et al., "Pre-training without Natural Images" (ACCV 2020); Nakashima et al. (AAAI 2022).
A category is 2-4 random contractive affine maps x -> A x + b; an image is the attractor drawn by the
chaos game. Categories whose attractor fills too little of the canvas (a dot, a line) are rejected, as
FractalDB's filling-rate filter does. Instances of a category vary the maps' weights (FractalDB's
intra-category augmentation), the point colours and the background, so a category is a shape, not a colour.

With `colour_schemes` = k > 0 a category is a (shape, colour scheme) pair instead: each of k fixed palettes
gives every map of the shape its colour, so telling categories apart needs the shape *and* the colours
(features that keep colour, which frozen-base adapters on stained tissue need), and no shortcut through
colour alone exists because every palette is used by every shape.
"""

from __future__ import annotations

import numpy as np

MAX_MAPS = 4
_SKIP = 16  # first chaos-game points, before the orbit reaches the attractor


def _contract(params: np.ndarray, limit: float = 0.95) -> np.ndarray:
    """Scale every map's linear part so that its largest singular value is at most `limit` (a contraction)."""
    linear = params[..., :4].reshape(*params.shape[:-1], 2, 2)
    sigma = np.linalg.svd(linear, compute_uv=False)[..., 0]
    scale = np.minimum(1.0, limit / np.maximum(sigma, 1e-12))
    out = params.copy()
    out[..., :4] *= scale[..., None]
    return out


def _map_probabilities(params: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Chaos-game probabilities proportional to each map's |det| (its area), as in FractalDB."""
    det = np.abs(params[..., 0] * params[..., 3] - params[..., 1] * params[..., 2]) + 1e-3
    det = np.where(used, det, 0.0)
    return det / det.sum(-1, keepdims=True)


def chaos_game(params: np.ndarray, probs: np.ndarray, n_points: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Orbits of a batch of IFS: points (n_points, B, 2) and the map that drew each point (n_points, B)."""
    choice = (rng.random((n_points + _SKIP, len(params), 1)) > probs.cumsum(-1)[None]).sum(-1)
    choice = np.minimum(choice, params.shape[1] - 1)
    return _orbit(params, choice), choice[_SKIP:]


def _pixels(points: np.ndarray, size: int, margin: float = 0.08) -> np.ndarray:
    """Flat pixel index of every point, the attractor fitted into the canvas (aspect kept)."""
    low, high = points.min(0), points.max(0)
    extent = (high - low).max(-1, keepdims=True) + 1e-9
    unit = (points - low) / extent  # in [0, 1] along the longer side
    unit = margin + unit * (1 - 2 * margin) + (1 - 2 * margin) * (1 - (high - low) / extent) / 2
    ij = np.clip((unit * size).astype(np.int64), 0, size - 1)
    return ij[..., 1] * size + ij[..., 0]


def fill_rates(params: np.ndarray, size: int = 32, n_points: int = 1500, seed: int = 0) -> np.ndarray:
    """Fraction of the canvas each IFS's attractor covers."""
    used = np.abs(params).sum(-1) > 0
    points, _ = chaos_game(params, _map_probabilities(params, used), n_points, np.random.default_rng(seed))
    flat = _pixels(points, size)
    return np.array([np.unique(flat[:, b]).size / size**2 for b in range(len(params))])


def sample_categories(num: int, rng: np.random.Generator, min_fill: float = 0.12, size: int = 32) -> np.ndarray:
    """`num` IFS categories as an array (num, MAX_MAPS, 6) of affine maps (a, b, c, d, e, f); unused maps are 0."""
    kept: list[np.ndarray] = []
    while len(kept) < num:
        candidates = rng.uniform(-1, 1, (256, MAX_MAPS, 6))
        n_maps = rng.integers(2, MAX_MAPS + 1, 256)
        candidates[np.arange(MAX_MAPS)[None, :] >= n_maps[:, None]] = 0.0
        candidates = _contract(candidates)
        fill = fill_rates(candidates, size, seed=int(rng.integers(1 << 31)))
        kept.extend(candidates[fill >= min_fill])
    return np.stack(kept[:num])


def _instance_draws(categories: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n_points: int,
                    jitter: float, palettes: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every random number one batch of renders uses, drawn on the CPU in a fixed order, so that the numpy
    and the torch renderer (any device) draw the same instances from the same seed."""
    params = categories[labels].copy()
    used = np.abs(params).sum(-1) > 0
    params *= rng.uniform(1 - jitter, 1 + jitter, params.shape)
    params = _contract(params)
    probs = _map_probabilities(params, used)
    choice = (rng.random((n_points + _SKIP, len(labels), 1)) > probs.cumsum(-1)[None]).sum(-1)
    choice = np.minimum(choice, params.shape[1] - 1)
    batch = len(labels)
    if palettes is None:
        palette = rng.uniform(0.3, 1.0, (batch, MAX_MAPS, 3))  # one colour per map: texture within the shape
    else:  # label-preserving: the scheme's colours, slightly jittered per instance
        palette = np.clip(palettes * rng.uniform(0.9, 1.1, (batch, 1, 1)), 0.0, 1.0)
    background = rng.uniform(0.0, 0.25, (batch, 1, 1, 3))
    return {"params": params, "choice": choice, "palette": palette, "background": background}


def _orbit(params: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """The chaos game with given map choices: points (n_points, B, 2) after the first _SKIP."""
    rows = np.arange(len(params))
    xy = np.zeros((len(params), 2))
    points = np.empty((len(choice), len(params), 2))
    for t in range(len(choice)):
        p = params[rows, choice[t]]
        xy = np.stack([p[:, 0] * xy[:, 0] + p[:, 1] * xy[:, 1] + p[:, 4],
                       p[:, 2] * xy[:, 0] + p[:, 3] * xy[:, 1] + p[:, 5]], axis=1)
        points[t] = xy
    return points[_SKIP:]


def render(categories: np.ndarray, labels: np.ndarray, rng: np.random.Generator, size: int = 32,
           n_points: int = 1200, jitter: float = 0.15, palettes: np.ndarray | None = None,
           device: str | None = None) -> np.ndarray:
    """uint8 images (B, size, size, 3): one jittered, coloured instance of each labelled category.

    `palettes` (B, MAX_MAPS, 3) in [0, 1] fixes the colour of every map per image; None draws them at random.
    `device` (e.g. "cuda") renders with torch there (fl_medlego.pretrain.fractals_torch): same draws, same
    images up to the rounding of colour averages; None renders with numpy.
    """
    draws = _instance_draws(categories, labels, rng, n_points, jitter, palettes)
    if device is not None:
        from .fractals_torch import render_draws

        return render_draws(draws, size, device)
    choice = draws["choice"][_SKIP:]
    flat = _pixels(_orbit(draws["params"], draws["choice"]), size)  # (n, B)
    batch = len(labels)
    colours = draws["palette"][np.arange(batch)[None, :], choice]  # (n, B, 3)
    index = (flat + np.arange(batch)[None, :] * size * size).ravel()
    counts = np.bincount(index, minlength=batch * size * size).reshape(batch, size, size, 1)
    sums = np.stack([np.bincount(index, colours[..., c].ravel(), minlength=batch * size * size)
                     for c in range(3)], -1).reshape(batch, size, size, 3)
    foreground = sums / np.maximum(counts, 1)
    image = np.where(counts > 0, foreground, draws["background"])
    return (image * 255).round().astype(np.uint8)


def fractal_dataset(num_categories: int, per_category: int, seed: int, size: int = 32, batch: int = 512,
                    colour_schemes: int = 0, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A FractalDB-like set: images (N, size, size, 3) uint8 and their category labels (N,).

    With colour_schemes = k > 0, the categories are num_categories / k shapes times k palettes
    (label = shape * k + palette).
    """
    rng = np.random.default_rng(seed)
    schemes = max(colour_schemes, 1)
    if num_categories % schemes:
        raise ValueError(f"{num_categories} categories do not split into {colour_schemes} colour schemes")
    shapes = sample_categories(num_categories // schemes, rng, size=size)
    # Drawn only when asked for, so that the colourful recipes' sets stay what they were.
    palettes = rng.uniform(0.3, 1.0, (schemes, MAX_MAPS, 3)) if colour_schemes else None
    labels = np.repeat(np.arange(num_categories), per_category)
    rng.shuffle(labels)
    images = np.concatenate([
        render(shapes, part // schemes, rng, size, palettes=palettes[part % schemes] if colour_schemes else None,
               device=device)
        for part in (labels[i:i + batch] for i in range(0, len(labels), batch))])
    return images, labels
