"""Crops of the few natural photographs that installed packages ship under public-domain / CC0 terms.

Asano et al., "A critical analysis of self-supervision, or what we can learn from a single image"
(ICLR 2020): heavy augmentation of one or a few images is enough to learn good low-level features.
The images come from scikit-image (installed with medmnist); each is public domain or CC0 according to
scikit-image's own docstrings. Its medical samples (retina, immunohistochemistry, cell) are left out on
purpose: the base must carry no patient data of any kind.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# name -> licence, as scikit-image documents it (skimage.data.<name>.__doc__)
SOURCES: dict[str, str] = {
    "astronaut": "public domain (NASA)",
    "brick": "CC0 (CC0Textures)",
    "camera": "CC0 (Lav Varshney)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "coins": "no known copyright restrictions",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "horse": "CC0 (Andreas Preuss)",
    "hubble_deep_field": "public domain (NASA)",
    "rocket": "public domain (SpaceX)",
    "text": "public domain",
}


def load_sources() -> list[np.ndarray]:
    """The source photographs as uint8 (H, W, 3) arrays (grey ones repeated to 3 channels)."""
    from skimage import data

    images = []
    for name in SOURCES:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        images.append(image[..., :3].astype(np.uint8))
    return images


def random_crops(count: int, seed: int, size: int = 32, min_side: int = 24, max_side: int = 160) -> np.ndarray:
    """uint8 (count, size, size, 3): square crops of random source, place and side, resized to `size`."""
    rng = np.random.default_rng(seed)
    sources = load_sources()
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        image = sources[rng.integers(len(sources))]
        h, w = image.shape[:2]
        side = int(np.exp(rng.uniform(np.log(min_side), np.log(min(max_side, h, w)))))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = torch.from_numpy(image[top:top + side, left:left + side]).permute(2, 0, 1)[None].float()
        out[i] = F.interpolate(crop, size=(size, size), mode="area")[0].permute(1, 2, 0).round().byte().numpy()
    return out
