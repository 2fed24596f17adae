"""Backbones the package ships, pretrained offline by `fl-medlego pretrain-base` (no patient data, no download).

`model.pretrained = "bundled"` picks the file for the configured model; each file has a model card beside it
(`<file>.md`) that states its recipe, data, licence, seed, hardware, wall time, measured table and SHA-256.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED = "bundled"
_FILES = {"vit_medmnist_28": "vit_medmnist_28.safetensors"}


def bundled_base_path(model_name: str) -> Path:
    """Where the package keeps the base for `model_name` (whether or not it is there yet)."""
    if model_name not in _FILES:
        raise ValueError(f"the package ships a pretrained base only for {sorted(_FILES)}, not {model_name!r}: "
                         "set model.pretrained to 'timm' (hub weights), a checkpoint path, or 'none'")
    return Path(__file__).with_name(_FILES[model_name])


def bundled_base(model_name: str) -> Path:
    """The shipped weights for `model_name`; a clear error when the package ships none for it."""
    path = bundled_base_path(model_name)
    if not path.is_file():
        raise FileNotFoundError(f"the bundled base {path} is missing from this installation: reinstall fl-medlego, "
                                "or set model.pretrained to a checkpoint path or 'none'")
    return path


def model_card(model_name: str) -> Path:
    return bundled_base(model_name).with_suffix(".md")
