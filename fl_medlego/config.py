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

from .crossmodal.settings import CrossModalSettings
from .data import SiteSpec, parse_sites
from .kinds import SiteKind, get_kind, kind_for_strategy, list_kinds
from .lora import SVDLoRAConfig
from .merging.medlego import MedLegoOptions
from .models import preset_image_size
from .privacy import PrivacySettings
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


GUARD_ACTIONS = ("clip", "reject")


@dataclass(frozen=True)
class GuardSettings:
    """Bounds on a site's update, checked by the server before anything is combined.

    An update whose norm (Frobenius, of what it changes) exceeds `norm_factor` x the round's lower
    median norm, or `max_norm` when set, is clipped to that bound or rejected. The lower median: with
    two sites it is the smaller norm, so one site alone cannot set its own bound. 3 leaves room for
    honest sites whose data differ (their norms were within 2x of each other here) while bounding what
    one site can do to the combined update.
    """

    norm_factor: float = 3.0  # 0 turns the relative bound off
    max_norm: float = 0.0  # 0 = no absolute bound
    action: str = GUARD_ACTIONS[0]

    def __post_init__(self) -> None:
        if self.norm_factor < 0 or self.max_norm < 0 or not (self.norm_factor >= 1 or self.norm_factor == 0):
            raise ValueError(f"guard.norm-factor must be 0 (off) or >= 1 and guard.max-norm >= 0, got "
                             f"{self.norm_factor} and {self.max_norm}")
        if self.action not in GUARD_ACTIONS:
            raise ValueError(f"guard.action must be one of {GUARD_ACTIONS}, got {self.action!r}")


_LORA, _TRAIN, _DATA, _GUARD = SVDLoRAConfig(), TrainConfig(), DataSettings(), GuardSettings()
_PRIVACY, _CROSS_MODAL = PrivacySettings(), CrossModalSettings()

# Settings of the run itself (no dataclass of their own elsewhere).
RUN_DEFAULTS: dict[str, object] = {
    "sites": "blood,breast,organa,pneumonia",
    "strategy": "medlego",
    # "" = the site kind the strategy implies (adapter merges, vit_avg); "cross-modal" for its merges.
    "kind": "",
    "num-rounds": 3,
    "seed": 0,
    "output-dir": "outputs",
    "round-timeout": 1800,
    "node-wait-timeout": 120,
    # 0: every declared site in round 1 (the specialists), then at least half of them (rounded up).
    "min-sites": 0,
    # "" = nodes say which sites they host; "blood=1234,breast=5678" binds each site to its node id.
    "site-nodes": "",
    # "" = a new run; a run folder = continue that run from its last complete round, same settings.
    "resume": "",
    # Messages a node has waiting at once (0 = a round's messages all go out together). See server/window.py.
    "messages-per-node": 2,
    "model.name": "vit_medmnist_28",
    "model.pretrained": "bundled",
    # "" = the server builds the base itself and fingerprints it; else the fingerprint every site must have.
    "model.fingerprint": "",
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
    "train.device": _TRAIN.device,
    "train.precision": _TRAIN.precision,
    "train.schedule": _TRAIN.schedule,
    "train.warmup": _TRAIN.warmup,
    "train.augment": _TRAIN.augment,
    "train.class-balance": _TRAIN.class_balance,
    "data.root": _DATA.root,
    "data.image-size": _DATA.image_size,
    "data.partition": _DATA.partition,
    "data.dirichlet-alpha": _DATA.dirichlet_alpha,
    "data.max-train": _DATA.max_train,
    "data.max-eval": _DATA.max_eval,
    "guard.norm-factor": _GUARD.norm_factor,
    "guard.max-norm": _GUARD.max_norm,
    "guard.action": _GUARD.action,
    "privacy.mode": _PRIVACY.mode,
    "privacy.epsilon": _PRIVACY.epsilon,
    "privacy.delta": _PRIVACY.delta,
    "privacy.max-grad-norm": _PRIVACY.max_grad_norm,
    "privacy.accountant": _PRIVACY.accountant,
    "cross-modal.text-targets": ",".join(_CROSS_MODAL.text_targets),
    "cross-modal.text-init-std": _CROSS_MODAL.text_init_std,
    "cross-modal.logit-scale": _CROSS_MODAL.logit_scale,
    "cross-modal.negatives": _CROSS_MODAL.negatives,
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
    guard: GuardSettings
    min_sites: int
    site_nodes: dict  # site -> node id, when the coordinator declares the binding (else discovery decides)
    base_fingerprint: str  # "" = the server computes it from the model settings
    resume: str  # a run folder to continue, or ""
    messages_per_node: int  # messages a node has waiting at once (0: all of a round's at once)
    privacy: PrivacySettings
    cross_modal: CrossModalSettings

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

    def required_sites(self, server_round: int, declared: int) -> int:
        """How many sites must be combined for round N to count (min-sites; 0: all, then half)."""
        if self.min_sites > 0:
            return min(self.min_sites, declared)
        return declared if server_round == 1 else -(-declared // 2)

    def output_path(self, run_name: str) -> Path:
        """Absolute. Flower runs apps in processes whose working directory is not the user's, so a
        relative output-dir resolves against ~/fl-medlego (the default: ~/fl-medlego/outputs)."""
        root = Path(self.output_dir).expanduser()
        if not root.is_absolute():
            root = Path.home() / "fl-medlego" / root
        return (root / run_name).resolve()


def _merge_settings(c: dict) -> tuple[str, MergeSettings]:
    strategy, kind_name = str(c["strategy"]), str(c["kind"])
    try:
        kind = get_kind(kind_name) if kind_name else kind_for_strategy(strategy)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    if strategy not in kind.strategies():
        raise ValueError(f"strategy {strategy!r} does not run sites of kind {kind.name!r}; its strategies: "
                         f"{', '.join(kind.strategies())}")
    max_rank = int(c["merge.max-rank"])
    shared = {"energy": float(c["merge.energy"]), "max_rank": max_rank if max_rank > 0 else None}
    options = kind.merge_options(strategy, shared, parse_overrides(str(c["merge.options"])))
    return kind.name, MergeSettings(strategy, options, str(c["merge.weighting"]))


def _non_negative(key: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{key} must be >= 0, got {value}")
    return value


def _site_nodes(text: str) -> dict:
    """'blood=12,breast=34' -> {'blood': 12, 'breast': 34}."""
    pairs = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        site, sep, node = item.partition("=")
        if not sep or not node.strip().isdigit() or site.strip() in pairs:
            raise ValueError(f"site-nodes entry {item!r}: write 'site=NODE_ID', each site once")
        pairs[site.strip()] = int(node)
    return pairs


def _privacy_settings(c: dict, kind_name: str) -> PrivacySettings:
    privacy = PrivacySettings(mode=str(c["privacy.mode"]), epsilon=float(c["privacy.epsilon"]),
                              delta=float(c["privacy.delta"]), max_grad_norm=float(c["privacy.max-grad-norm"]),
                              accountant=str(c["privacy.accountant"]))
    if privacy.private and not get_kind(kind_name).supports_privacy:
        private_kinds = [k for k in list_kinds() if get_kind(k).supports_privacy]
        raise ValueError(f"privacy.mode={privacy.mode!r} is not available for strategy {c['strategy']!r} (site kind "
                         f"{kind_name!r}); it is for the strategies of site kind(s) {private_kinds}")
    if privacy.private and str(c["new-task.site"]):
        raise ValueError("privacy.mode='dp-sgd' does not cover the new_task scenario's learning curves: "
                         "leave new-task.site empty or privacy.mode='none'")
    return privacy


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
                              orth_weight=lora.orth_weight, seed=int(c["seed"]), device=str(c["train.device"]),
                              precision=str(c["train.precision"]), schedule=str(c["train.schedule"]),
                              warmup=float(c["train.warmup"]), augment=str(c["train.augment"]),
                              class_balance=str(c["train.class-balance"])),
            data=DataSettings(root=str(c["data.root"]), image_size=int(c["data.image-size"]),
                              partition=str(c["data.partition"]), dirichlet_alpha=float(c["data.dirichlet-alpha"]),
                              max_train=int(c["data.max-train"]), max_eval=int(c["data.max-eval"])),
            full_lr=float(c["train.full-lr"]),
            site_ranks=tuple(int(r) for r in str(c["lora.site-ranks"]).split(",") if r.strip()),
            new_task_site=str(c["new-task.site"]), new_task_epochs=int(c["new-task.epochs"]),
            guard=GuardSettings(norm_factor=float(c["guard.norm-factor"]), max_norm=float(c["guard.max-norm"]),
                                action=str(c["guard.action"])),
            min_sites=_non_negative("min-sites", int(c["min-sites"])),
            site_nodes=_site_nodes(str(c["site-nodes"])),
            base_fingerprint=str(c["model.fingerprint"]),
            resume=str(c["resume"]),
            messages_per_node=_non_negative("messages-per-node", int(c["messages-per-node"])),
            privacy=_privacy_settings(c, kind_name),
            cross_modal=CrossModalSettings(
                text_targets=tuple(t.strip() for t in str(c["cross-modal.text-targets"]).split(",") if t.strip()),
                text_init_std=float(c["cross-modal.text-init-std"]), logit_scale=float(c["cross-modal.logit-scale"]),
                negatives=str(c["cross-modal.negatives"])),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid run config: {err}") from err


def settings_table(cfg: RunConfig) -> dict[str, object]:
    """Flat, JSON-friendly view of the settings (for summaries)."""
    return dataclasses.asdict(cfg)
