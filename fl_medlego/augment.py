"""Batched per-image augmentation in torch (each image draws its own parameters, no Python loop per image).

Random resized crop + flip + right-angle rotation through one affine grid, then colour jitter and random
greyscale. Output is the model's input: float (B, 3, out, out) in [-1, 1], as `fl_medlego.train` feeds it.
Used by pretraining (strong views) and, with train.augment='light', by site training (mild, label-safe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# MedMNIST sets whose classes name a side (organA / C / S: "left kidney", "right femur"): a mirror changes
# the label, so site training never flips them.
LEFT_RIGHT_CLASSES = frozenset({"organamnist", "organcmnist", "organsmnist"})


def flips_keep_labels(flag: str, class_names: tuple[str, ...] = ()) -> bool:
    """False for the MedMNIST sets above and for any set (a hospital's own) whose class names say left or right."""
    sided = any(re.search(r"\b(left|right)\b", name, re.IGNORECASE) for name in class_names)
    return flag not in LEFT_RIGHT_CLASSES and not sided


@dataclass(frozen=True)
class AugmentConfig:
    min_scale: float = 0.35  # smallest crop side, as a fraction of the image side
    colour: float = 0.4  # brightness / contrast / saturation jitter strength
    grey: float = 0.3  # probability of greyscale (three of the four MedMNIST tasks are grey)
    rotate: bool = True  # right-angle rotations (medical images have no canonical "up" either)
    flip: bool = True  # horizontal flips (not where left and right are classes, e.g. organA's organs)


def augment(images: torch.Tensor, out: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> augmented float (B, 3, out, out) in [-1, 1], on the images' device.

    Every random parameter is drawn from `generator` on the CPU and then moved: the same generator gives the
    same views on a GPU as on the CPU."""
    return augment_floats(images.permute(0, 3, 1, 2).float().div_(255.0), out, cfg, generator)


def augment_floats(x: torch.Tensor, out: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """float (B, C, H, W) in [0, 1] -> augmented float (B, C, out, out) in [-1, 1], on x's device."""
    b, device = len(x), x.device

    def draw(values: torch.Tensor) -> torch.Tensor:
        return values.to(device)

    def uniform(low: float, high: float) -> torch.Tensor:
        return draw(torch.rand(b, generator=generator) * (high - low) + low)

    scale = uniform(cfg.min_scale, 1.0)
    shift_x, shift_y = (uniform(-1, 1) * (1 - scale) for _ in range(2))
    flip = draw(torch.where(torch.rand(b, generator=generator) < (0.5 if cfg.flip else 0.0), -1.0, 1.0))
    quarter = draw(torch.randint(0, 4 if cfg.rotate else 1, (b,), generator=generator).float() * (torch.pi / 2))
    cos, sin = torch.cos(quarter), torch.sin(quarter)
    theta = torch.stack([torch.stack([scale * cos * flip, -scale * sin, shift_x], 1),
                         torch.stack([scale * sin * flip, scale * cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, [b, x.shape[1], out, out], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    if cfg.colour > 0:
        grey = x.mean(1, keepdim=True)
        saturation = uniform(1 - cfg.colour, 1 + cfg.colour).view(b, 1, 1, 1)
        x = grey + (x - grey) * saturation
        mean = x.mean((1, 2, 3), keepdim=True)
        contrast = uniform(1 - cfg.colour, 1 + cfg.colour).view(b, 1, 1, 1)
        x = mean + (x - mean) * contrast
        x = x * uniform(1 - cfg.colour, 1 + cfg.colour).view(b, 1, 1, 1)
    to_grey = draw(torch.rand(b, generator=generator) < cfg.grey).view(b, 1, 1, 1)
    x = torch.where(to_grey, x.mean(1, keepdim=True).expand_as(x), x)
    return (x.clamp_(0, 1) - 0.5) / 0.5
