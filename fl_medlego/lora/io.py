"""Adapters on disk, PEFT's way: `adapter_config.json` + `adapter_model.safetensors` (only adapter tensors).

The config describes the adapter fully: its SVD-LoRA settings (targets, rank, alpha, ...), the ranks
of each matrix, and the base model it was trained on (name and fingerprint of the frozen weights).
Loading checks them against what the caller is about to put the adapter on, and refuses a mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from safetensors.torch import save_file

from ..errors import UserError
from ..files import atomic_path, read_tensors, write_json_atomic
from .config import SVDLoRAConfig
from .factors import Adapter

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "fl-medlego/svd-lora"
FORMAT_VERSION = 2  # 2: the SVD-LoRA config and the base model are in the config file


def save_adapter(adapter: Adapter, directory: str | Path, lora: SVDLoRAConfig | None = None,
                 base_model: str | None = None, base_fingerprint: str | None = None) -> Path:
    """Write the adapter into `directory` (created if needed), each file atomically; returns the directory.

    lora / base_model / base_fingerprint describe what it adapts; leave them None only when unknown.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in adapter.to_tensors().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "svd_lora": dataclasses.asdict(lora) if lora is not None else None,
        "base_model_name_or_path": base_model,
        "base_model_fingerprint": base_fingerprint,
        "scale": adapter.scale,
        "ranks": {name: f.rank for name, f in adapter.factors.items()},
        "metadata": adapter.metadata,
    }
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(directory / CONFIG_FILE, config, sort_keys=True, default=str)
    return directory


def read_adapter_config(directory: str | Path) -> dict:
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: an adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(written by fl-medlego or `fl_medlego.lora.save_adapter`)"
            )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{config_path} is not valid JSON ({err}): the adapter folder is corrupt") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{config_path} is not an fl-medlego SVD-LoRA adapter")
    return config


def check_adapter_fits(config: dict, where: str, lora: SVDLoRAConfig | None = None, base_model: str | None = None,
                       base_fingerprint: str | None = None) -> None:
    """Refuse an adapter (its config file's content) trained on another base or for other targets."""
    saved_lora = config.get("svd_lora")
    if lora is not None and saved_lora is not None and tuple(saved_lora["targets"]) != tuple(lora.targets):
        raise UserError(f"{where} adapts {list(saved_lora['targets'])}, but it is being loaded for targets "
                         f"{list(lora.targets)}: use an adapter trained with lora.targets='{','.join(lora.targets)}'")
    saved_base, saved_print = config.get("base_model_name_or_path"), config.get("base_model_fingerprint")
    if base_model is not None and saved_base is not None and saved_base != base_model:
        raise UserError(f"{where} was trained on base model {saved_base!r}, not {base_model!r}: "
                         "an adapter only fits the base it was trained on")
    if base_fingerprint is not None and saved_print is not None and saved_print != base_fingerprint:
        raise UserError(f"{where} was trained on base weights {saved_print}, but these are {base_fingerprint} "
                         f"(same name {saved_base!r}, other weights: check model.pretrained)")
    if config.get("format_version", 1) < 2 and (lora or base_model or base_fingerprint):
        log.warning("%s predates self-describing adapters: its targets and base model cannot be checked", where)


def load_adapter(directory: str | Path, expect_lora: SVDLoRAConfig | None = None, expect_base: str | None = None,
                 expect_fingerprint: str | None = None) -> Adapter:
    """Read an adapter written by `save_adapter`, refusing one made for other targets or another base."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    check_adapter_fits(config, str(directory), expect_lora, expect_base, expect_fingerprint)
    return Adapter.from_tensors(read_tensors(directory / WEIGHTS_FILE), scale=float(config["scale"]),
                                metadata=config.get("metadata", {}))
