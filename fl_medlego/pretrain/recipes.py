"""Pretraining recipes by name: which images, which objective, which augmentation.

Every recipe uses only data made on the spot (formulas, noise) or public-domain / CC0 photographs that
installed packages ship: no patient image, no download, no licence to clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..augment import AugmentConfig
from ..errors import UnknownNameError


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    source: str  # "fractal", "procedural", "natural" or "mixed"
    objective: str  # "supervised" (needs category labels), "simclr" or "mim" (masked image modelling)
    images: int  # size of the generated pretraining set
    categories: int = 0  # fractal categories (supervised)
    colour_schemes: int = 0  # fractal categories are shapes x this many fixed palettes (0: random colours)
    lr: float = 1e-3
    weight_decay: float = 0.05
    augment: AugmentConfig = field(default_factory=AugmentConfig)


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("fractal-sup", "FractalDB-style: classify IFS fractal categories (colour, instance jitter)",
           source="fractal", objective="supervised", images=64_000, categories=640,
           augment=AugmentConfig(min_scale=0.6, colour=0.3, grey=0.3)),
    Recipe("fractal-colour-sup", "FractalDB-style, colour kept: classify (IFS shape, fixed palette) pairs, "
           "no colour jitter", source="fractal", objective="supervised", images=64_000, categories=640,
           colour_schemes=4, augment=AugmentConfig(min_scale=0.6, colour=0.0, grey=0.0)),
    Recipe("fractal-colour-sup-1k", "fractal-colour-sup at FractalDB-1k scale: 1000 categories (250 shapes x 4 "
           "palettes) x 1000 instances; a GPU recipe (benchmarks/pretrain_gpu.py)", source="fractal",
           objective="supervised", images=1_000_000, categories=1000, colour_schemes=4,
           augment=AugmentConfig(min_scale=0.6, colour=0.0, grey=0.0)),
    Recipe("procedural-simclr", "SimCLR on dead-leaves and 1/f-noise images (Baradad et al. 2021)",
           source="procedural", objective="simclr", images=64_000),
    Recipe("natural-simclr", "SimCLR on crops of 12 public-domain / CC0 photographs (Asano et al. 2020)",
           source="natural", objective="simclr", images=64_000),
    Recipe("mixed-simclr", "SimCLR on fractals, procedural images and photograph crops together",
           source="mixed", objective="simclr", images=64_000),
    Recipe("mixed-mim", "SimMIM masked-patch reconstruction on fractals, procedural images and photograph crops",
           source="mixed", objective="mim", images=64_000, augment=AugmentConfig(min_scale=0.6, colour=0.2)),
]}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UnknownNameError("pretraining recipe", name, RECIPES)
    return RECIPES[name]


def build_images(recipe: Recipe, seed: int, size: int = 32, render_device=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The recipe's pretraining set: uint8 images (N, size, size, 3) and category labels (or None).

    `render_device` (a GPU) renders fractals with torch there: the same images as numpy's (same draws)."""
    from .fractals import fractal_dataset
    from .natural import random_crops
    from .procedural import procedural_dataset

    if recipe.source == "fractal":
        per_category = max(1, recipe.images // recipe.categories)
        return fractal_dataset(recipe.categories, per_category, seed, size, colour_schemes=recipe.colour_schemes,
                               device=render_device)
    if recipe.source == "procedural":
        return procedural_dataset(recipe.images, seed, size), None
    if recipe.source == "natural":
        return random_crops(recipe.images, seed, size), None
    if recipe.source == "mixed":
        third = recipe.images // 3
        fractals, _ = fractal_dataset(max(1, third // 100), 100, seed, size)
        parts = [fractals, procedural_dataset(third, seed + 1, size),
                 random_crops(recipe.images - 2 * third, seed + 2, size)]
        images = np.concatenate(parts)
        return images[np.random.default_rng(seed).permutation(len(images))], None
    raise ValueError(f"recipe {recipe.name}: unknown source {recipe.source!r}")
