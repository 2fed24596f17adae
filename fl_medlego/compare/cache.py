"""Trained specialists on disk, so that a comparison trains each one once and can resume.

    CACHE/<settings hash>/seed-<s>/<site>/<kind>/   the kind's saved update + head.safetensors + metrics.json
                                                    (adapter: adapter/; full: backbone.safetensors)
    CACHE/<settings hash>/seed-<s>/multitask/       model.safetensors + metrics.json

metrics.json is written last: an entry without it is incomplete and is trained again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..config import RunConfig, settings_table
from ..files import read_tensors, write_tensor_folder

# Settings (run config keys) that do not change what a specialist learns. num-rounds does under DP-SGD
# (the site plans its noise over that many rounds), so a private specialist keeps it in its key.
_IRRELEVANT = ("strategy", "kind", "output-dir", "round-timeout", "node-wait-timeout", "seed",
               "min-sites", "site-nodes", "model.fingerprint", "resume", "messages-per-node",
               "cross-modal.tune-on")  # what compare chooses merge options on, after training
_IRRELEVANT_GROUPS = ("merge.", "guard.")


def settings_hash(cfg: RunConfig) -> str:
    irrelevant = _IRRELEVANT + (() if cfg.privacy.private else ("num-rounds",))
    relevant = {k: v for k, v in settings_table(cfg).items()
                if k not in irrelevant and not k.startswith(_IRRELEVANT_GROUPS)}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]


class SpecialistCache:
    def __init__(self, root: Path, cfg: RunConfig) -> None:
        self.root = Path(root) / settings_hash(cfg) / f"seed-{cfg.seed}"

    def entry(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @staticmethod
    def complete(entry: Path) -> bool:
        return (entry / "metrics.json").is_file()

    @staticmethod
    def write(entry: Path, tensors: dict[str, dict[str, torch.Tensor]], metrics: dict, extra=None) -> None:
        """Write into a temporary folder, then swap it with the old entry, if any: a crash or a failed write
        never leaves a half entry, and the old entry stays until the new one is in place."""
        def rest(folder: Path) -> None:
            if extra is not None:
                extra(folder)
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))  # the folder is moved as a whole

        write_tensor_folder(entry, tensors, also=rest)

    @staticmethod
    def read(entry: Path, name: str) -> dict[str, torch.Tensor]:
        return read_tensors(entry / f"{name}.safetensors")

    @staticmethod
    def metrics(entry: Path) -> dict:
        return json.loads((entry / "metrics.json").read_text())
