"""Adapters on disk: `adapter_config.json` + `adapter_model.safetensors`, only adapter tensors."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .factors import Adapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "fl-medlego/svd-lora"
FORMAT_VERSION = 1


def save_adapter(adapter: Adapter, directory: str | Path) -> Path:
    """Write the adapter into `directory` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in adapter.to_tensors().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "scale": adapter.scale,
        "ranks": {name: f.rank for name, f in adapter.factors.items()},
        "metadata": adapter.metadata,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_adapter(directory: str | Path) -> Adapter:
    """Read an adapter written by `save_adapter`, with a clear error for anything else."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: an adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(written by fl-medlego or `fl_medlego.lora.save_adapter`)"
            )
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not an fl-medlego SVD-LoRA adapter (format {config.get('format')!r})")
    return Adapter.from_tensors(load_file(str(weights_path)), scale=float(config["scale"]),
                                metadata=config.get("metadata", {}))
