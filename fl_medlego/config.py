"""The Flower run config (flat, kebab-case, dotted groups) -> typed settings, in one parse.

Both the ServerApp and the ClientApp parse the same run config with `parse_run_config`; the result
holds the sites as objects, the site kind the strategy runs, and the merge method's options already
validated as that method's own options type. Every default is declared once: in the dataclass it
belongs to (`SVDLoRAConfig`, `TrainConfig`, `DataSettings`, the merge's options) or, for settings of
the run itself, in `RUN_DEFAULTS`. A scenario's pyproject.toml declares every key (Flower requires
it); `tests/test_scenarios.py` fails when a scenario's value drifts from DEFAULTS unintentionally.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .data import SiteSpec, parse_sites
from .kinds import SiteKind, get_kind, kind_for_strategy
from .lora import SVDLoRAConfig
from .merging.medlego import MedLegoOptions
from .models import preset_image_size
from .scenario import parse_overrides
from .train import TrainConfig

WEIGHTINGS = ("uniform", "examples")  # examples: weight each site by its number of training examples


@dataclass(frozen=True)
class DataSettings:
    root: str = "bundled"  # the sample in the package; a folder of MedMNIST files; "" = $MEDMNIST_ROOT / download
    image_size: int = 28  # the MedMNIST file size (28, 64, 128, 224); images are resized to the model's input
    partition: str = "iid"  # or "dirichlet" (label skew) when a modality is split across sites
    dirichlet_alpha: float = 0.5
    max_train: int = 0  # cap per site, 0 = all
    max_eval: int = 0


_LORA, _TRAIN, _DATA = SVDLoRAConfig(), TrainConfig(), DataSettings()

# Settings of the run itself (no dataclass of their own elsewhere).
RUN_DEFAULTS: dict[str, object] = {
    "sites": "blood,breast,organa,pneumonia",
    "strategy": "medlego",
    "num-rounds": 3,
    "seed": 0,
    "output-dir": "outputs",
    "round-timeout": 1800,
    "node-wait-timeout": 120,
    "model.name": "vit_medmnist_28",
    "model.pretrained": "bundled",
    "lora.site-ranks": "",
    "merge.weighting": WEIGHTINGS[0],
    "merge.options": "",
    "train.full-lr": 0.001,  # full fine-tuning (kind `full`, the multi-task reference): AdamW at 1e-3 as usual for ViTs
    "new-task.site": "",
    "new-task.epochs": 8,
}

# Every knob, with its default. A scenario may override any of them in [tool.flwr.app.config].
DEFAULTS: dict[str, object] = {
    **RUN_DEFAULTS,
    "lora.rank": _LORA.rank,
    "lora.alpha": _LORA.alpha,
    "lora.targets": ",".join(_LORA.targets),
    "lora.init-std": _LORA.init_std,
    "lora.orth-weight": _LORA.orth_weight,
    # merge.energy / merge.max-rank are Med-LEGO's (and any method's with options of those names).
    "merge.energy": MedLegoOptions.energy,
    "merge.max-rank": MedLegoOptions.max_rank or 0,
    "train.local-epochs": _TRAIN.epochs,
    "train.batch-size": _TRAIN.batch_size,
    "train.lr": _TRAIN.lr,
    "train.weight-decay": _TRAIN.weight_decay,
    "data.root": _DATA.root,
    "data.image-size": _DATA.image_size,
    "data.partition": _DATA.partition,
    "data.dirichlet-alpha": _DATA.dirichlet_alpha,
    "data.max-train": _DATA.max_train,
    "data.max-eval": _DATA.max_eval,
}


@dataclass(frozen=True)
class MergeSettings:
    """How the server combines the sites' updates: the strategy and its validated options."""

    method: str
    options: object | None  # an instance of the method's options dataclass; None where it has none
    weighting: str = WEIGHTINGS[0]

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"merge.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")

    def with_options(self, **values) -> MergeSettings:
        """The same settings with some options replaced (validated again by the options type)."""
        if not values:
            return self
        if self.options is None:
            raise ValueError(f"strategy {self.method!r} has no options to set, got {sorted(values)}")
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **values))


@dataclass(frozen=True)
class RunConfig:
    sites: tuple[SiteSpec, ...]
    strategy: str
    kind_name: str  # the site kind the strategy runs (fl_medlego.kinds)
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
    data: DataSettings
    full_lr: float
    site_ranks: tuple[int, ...]  # per-site adapter ranks, cycled over the sites (empty: lora.rank for all)
    new_task_site: str  # new_task scenario: the site held out of the merge
    new_task_epochs: int

    @property
    def kind(self) -> SiteKind:
        return get_kind(self.kind_name)

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    def site(self, name: str) -> SiteSpec:
        for spec in self.sites:
            if spec.name == name:
                return spec
        raise ValueError(f"site {name!r} is not in this scenario's sites {self.site_names}")

    @property
    def image_size(self) -> int:
        """The input size of the backbone (images of any file size are resized to it)."""
        return preset_image_size(self.model_name)

    def rank_of(self, site: str) -> int:
        """Adapter rank of a site: lora.rank unless lora.site-ranks is set (then by the site's position)."""
        names = self.site_names
        if not self.site_ranks or site not in names:
            return self.lora.rank
        return self.site_ranks[names.index(site) % len(self.site_ranks)]

    def output_path(self, run_name: str) -> Path:
        """Absolute. Flower runs apps in processes whose working directory is not the user's, so a
        relative output-dir resolves against ~/fl-medlego (the default: ~/fl-medlego/outputs)."""
        root = Path(self.output_dir).expanduser()
        if not root.is_absolute():
            root = Path.home() / "fl-medlego" / root
        return (root / run_name).resolve()


def _merge_settings(c: dict) -> tuple[str, MergeSettings]:
    strategy = str(c["strategy"])
    try:
        kind = kind_for_strategy(strategy)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    max_rank = int(c["merge.max-rank"])
    shared = {"energy": float(c["merge.energy"]), "max_rank": max_rank if max_rank > 0 else None}
    options = kind.merge_options(strategy, shared, parse_overrides(str(c["merge.options"])))
    return kind.name, MergeSettings(strategy, options, str(c["merge.weighting"]))


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
        kind_name, merge = _merge_settings(c)
        return RunConfig(
            sites=tuple(parse_sites(str(c["sites"]))), strategy=merge.method, kind_name=kind_name,
            num_rounds=int(c["num-rounds"]), seed=int(c["seed"]), output_dir=str(c["output-dir"]),
            round_timeout=float(c["round-timeout"]), node_wait_timeout=float(c["node-wait-timeout"]),
            model_name=str(c["model.name"]), pretrained=str(c["model.pretrained"]), lora=lora, merge=merge,
            train=TrainConfig(epochs=int(c["train.local-epochs"]), batch_size=int(c["train.batch-size"]),
                              lr=float(c["train.lr"]), weight_decay=float(c["train.weight-decay"]),
                              orth_weight=lora.orth_weight, seed=int(c["seed"])),
            data=DataSettings(root=str(c["data.root"]), image_size=int(c["data.image-size"]),
                              partition=str(c["data.partition"]), dirichlet_alpha=float(c["data.dirichlet-alpha"]),
                              max_train=int(c["data.max-train"]), max_eval=int(c["data.max-eval"])),
            full_lr=float(c["train.full-lr"]),
            site_ranks=tuple(int(r) for r in str(c["lora.site-ranks"]).split(",") if r.strip()),
            new_task_site=str(c["new-task.site"]), new_task_epochs=int(c["new-task.epochs"]),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid run config: {err}") from err


def settings_table(cfg: RunConfig) -> dict[str, object]:
    """Flat, JSON-friendly view of the settings (for summaries)."""
    return dataclasses.asdict(cfg)
