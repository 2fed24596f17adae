"""The Flower run config (flat, kebab-case, dotted groups) -> typed dataclasses, in one place.

Both the ServerApp and the ClientApp parse the same run config with `parse_run_config`; the
scenario's pyproject.toml declares every key with its default (see DEFAULTS for the full list).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .lora import SVDLoRAConfig
from .scenario import parse_overrides
from .train import TrainConfig

# Every knob, with its default. A scenario may override any of them in [tool.flwr.app.config].
DEFAULTS: dict[str, object] = {
    "sites": "blood,breast,organa,pneumonia",
    "strategy": "medlego",
    "num-rounds": 3,
    "seed": 0,
    "output-dir": "outputs",
    "round-timeout": 1800,
    "node-wait-timeout": 120,
    "model.name": "vit_medmnist_28",
    "model.pretrained": "bundled",
    "lora.rank": 4,
    "lora.alpha": 8.0,
    "lora.targets": "attn.qkv",
    "lora.init-std": 0.09,
    "lora.orth-weight": 0.01,
    "lora.site-ranks": "",
    "merge.energy": 0.9,
    "merge.max-rank": 16,
    "merge.weighting": "uniform",
    "merge.options": "",
    "train.local-epochs": 5,
    "train.batch-size": 64,
    "train.lr": 0.01,
    "train.weight-decay": 0.01,
    "train.full-lr": 0.001,
    "data.root": "bundled",
    "data.image-size": 28,
    "data.partition": "iid",
    "data.dirichlet-alpha": 0.5,
    "data.max-train": 0,
    "data.max-eval": 0,
    "new-task.site": "",
    "new-task.epochs": 8,
}


@dataclass
class DataSettings:
    root: str = "bundled"
    image_size: int = 28  # the MedMNIST file size (28, 64, 128, 224); images are resized to the model's input
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    max_train: int = 0
    max_eval: int = 0


@dataclass
class MergeSettings:
    energy: float = 0.9
    max_rank: int | None = 16  # 0 in the run config means no cap
    weighting: str = "uniform"  # or "examples": weight each site by its number of training examples
    options: dict = field(default_factory=dict)  # method-specific options, e.g. {"density": 0.5, "lam": 0.7}

    def __post_init__(self) -> None:
        if self.weighting not in ("uniform", "examples"):
            raise ValueError(f"merge.weighting must be 'uniform' or 'examples', got {self.weighting!r}")

    def options_for(self, option_names: list[str]) -> dict:
        """The options a merge method takes: energy / max-rank where it has them, plus merge.options."""
        values = {"energy": self.energy, "max_rank": self.max_rank}
        return {**{k: v for k, v in values.items() if k in option_names}, **self.options}


@dataclass
class RunConfig:
    sites: str
    strategy: str
    num_rounds: int
    seed: int
    output_dir: str
    round_timeout: float
    node_wait_timeout: float
    model_name: str
    pretrained: str
    lora: SVDLoRAConfig
    merge: MergeSettings
    train: TrainConfig
    data: DataSettings = field(default_factory=DataSettings)
    full_lr: float = 0.001  # learning rate for full fine-tuning (the non-adapter baselines)
    site_ranks: list[int] = field(default_factory=list)  # per-site adapter ranks, cycled over the sites
    new_task_site: str = ""  # new_task scenario: the site held out of the merge
    new_task_epochs: int = 8

    def rank_of(self, site_index: int) -> int:
        """Adapter rank of the i-th site of the scenario: lora.rank unless lora.site-ranks is set."""
        return self.site_ranks[site_index % len(self.site_ranks)] if self.site_ranks else self.lora.rank

    def output_path(self, run_name: str) -> Path:
        """Absolute. Flower runs apps in processes whose working directory is not the user's, so a
        relative output-dir resolves against ~/fl-medlego (the default: ~/fl-medlego/outputs)."""
        root = Path(self.output_dir).expanduser()
        if not root.is_absolute():
            root = Path.home() / "fl-medlego" / root
        return (root / run_name).resolve()


def parse_run_config(run_config: dict) -> RunConfig:
    """Typed settings from a Flower run config; unknown keys are an error that lists the known ones."""
    unknown = sorted(set(run_config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown run config key(s) {unknown}; known keys: {', '.join(sorted(DEFAULTS))}")
    c = {**DEFAULTS, **run_config}
    try:
        lora = SVDLoRAConfig(
            rank=int(c["lora.rank"]), alpha=float(c["lora.alpha"]),
            targets=tuple(t.strip() for t in str(c["lora.targets"]).split(",") if t.strip()),
            init_std=float(c["lora.init-std"]), orth_weight=float(c["lora.orth-weight"]),
        )
        max_rank = int(c["merge.max-rank"])
        return RunConfig(
            sites=str(c["sites"]), strategy=str(c["strategy"]), num_rounds=int(c["num-rounds"]),
            seed=int(c["seed"]), output_dir=str(c["output-dir"]), round_timeout=float(c["round-timeout"]),
            node_wait_timeout=float(c["node-wait-timeout"]),
            model_name=str(c["model.name"]), pretrained=str(c["model.pretrained"]), lora=lora,
            merge=MergeSettings(float(c["merge.energy"]), max_rank if max_rank > 0 else None,
                                str(c["merge.weighting"]), parse_overrides(str(c["merge.options"]))),
            site_ranks=[int(r) for r in str(c["lora.site-ranks"]).split(",") if r.strip()],
            new_task_site=str(c["new-task.site"]), new_task_epochs=int(c["new-task.epochs"]),
            train=TrainConfig(epochs=int(c["train.local-epochs"]), batch_size=int(c["train.batch-size"]),
                              lr=float(c["train.lr"]), weight_decay=float(c["train.weight-decay"]),
                              orth_weight=lora.orth_weight, seed=int(c["seed"])),
            data=DataSettings(root=str(c["data.root"]), image_size=int(c["data.image-size"]),
                              partition=str(c["data.partition"]), dirichlet_alpha=float(c["data.dirichlet-alpha"]),
                              max_train=int(c["data.max-train"]), max_eval=int(c["data.max-eval"])),
            full_lr=float(c["train.full-lr"]),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid run config: {err}") from err


def settings_table(cfg: RunConfig) -> dict[str, object]:
    """Flat, JSON-friendly view of the settings (for summaries)."""
    return dataclasses.asdict(cfg)
