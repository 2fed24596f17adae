"""The Flower run config (flat, kebab-case, dotted groups) -> typed settings, in one parse.

Both the ServerApp and the ClientApp parse the same run config with `parse_run_config`; the result
holds the sites as objects, the site kind the strategy runs, and the merge method's options already
validated as that method's own options type. Every setting is declared once, with its key, type,
default, allowed values and help (`fl_medlego.settings.setting`), in the dataclass it belongs to:
`RunSettings` (the run itself), `SVDLoRAConfig`, `MergeSettings`, `TrainConfig`, `DataSettings`,
`GuardSettings`, `PrivacySettings`, `NewTaskSettings`, and each site kind's own `settings_type`.
A scenario's pyproject.toml declares every key (Flower requires it); `tests/test_scenarios.py` fails
when a scenario's value drifts from the declared default unintentionally, and `tests/test_settings.py`
when the README's table is not `fl-medlego settings --markdown`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .data import SiteSpec, parse_sites
from .errors import ConfigError, UnknownNameError
from .kinds import KindContext, KindServer, KindSite, SiteKind, get_kind, kind_for_strategy, list_kinds
from .lora import SVDLoRAConfig
from .merging.medlego import MedLegoOptions
from .merging.parts import PartMerge
from .models import check_backbone_name, preset_image_size
from .privacy import PrivacySettings
from .privacy.site import check_private_kind
from .scenario import parse_overrides
from .settings import check_group, default_table, group_table, parse_group, setting, settings_of
from .train import TrainConfig

WEIGHTINGS = ("uniform", "examples")  # examples: weight each site by its number of training examples
PARTITIONS = ("iid", "dirichlet", "sample")
MEDMNIST_SIZES = (28, 64, 128, 224)
GUARD_ACTIONS = ("clip", "reject")
RENAMED = {"train.full-lr": "full.lr"}  # old key -> new key, named in the error for an old scenario file


def _sites(text: str) -> tuple[SiteSpec, ...]:
    return tuple(parse_sites(text))


def _sites_text(sites: tuple[SiteSpec, ...]) -> str:
    """The sites as a user writes them: one entry per modality, `name:N` for a modality split N ways, and
    `name=SOURCE` for a site with its own images."""
    def entry(site: SiteSpec) -> str:
        if site.own_data:
            return f"{site.name}={site.source}"
        short = site.flag.removesuffix("mnist")
        return short if site.count == 1 else f"{short}:{site.count}"

    return ",".join(entry(s) for s in sites if s.index == 0)


def _site_nodes(text: str) -> dict[str, int]:
    """'blood=12,breast=34' -> {'blood': 12, 'breast': 34}."""
    pairs = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        site, sep, node = item.partition("=")
        if not sep or not node.strip().isdigit() or site.strip() in pairs:
            raise ConfigError(f"site-nodes entry {item!r}: write 'site=NODE_ID', each site once")
        pairs[site.strip()] = int(node)
    return pairs


def _site_nodes_text(pairs: dict[str, int]) -> str:
    return ",".join(f"{site}={node}" for site, node in pairs.items())


def _part_pairs(text: str, key: str, example: str) -> dict[str, str]:
    """'projection=a,text=b' (or spaces) -> {'projection': 'a', 'text': 'b'}: matrix-name prefixes, each once."""
    pairs = {}
    for item in text.replace(",", " ").split():
        prefix, sep, value = item.partition("=")
        if prefix in pairs:
            raise ConfigError(f"{key} names part {prefix!r} twice: give each prefix once")
        if not sep or not prefix or not value:
            raise ConfigError(f"{key} entry {item!r}: write 'PREFIX=VALUE' separated by commas, each prefix once, "
                              f"e.g. {key}='{example}'")
        pairs[prefix] = value
    return pairs


def _part_methods(text: str) -> dict[str, str]:
    return _part_pairs(text, "merge.part-methods", "projection=task_arithmetic")


def _part_weights(text: str) -> dict[str, tuple[float, ...]]:
    """'image=1|2 projection=4' -> {'image': (1.0, 2.0), 'projection': (4.0,)}; alternatives are for compare."""
    weights = {}
    for prefix, value in _part_pairs(text, "merge.part-weights", "projection=4").items():
        try:
            choices = tuple(float(w) for w in value.split("|"))
        except ValueError:
            choices = ()
        if not choices or not all(math.isfinite(w) and w > 0 for w in choices) or len(set(choices)) < len(choices):
            raise ConfigError(f"merge.part-weights entry {prefix}={value}: give a positive number, or several "
                              f"different ones separated by | for compare to choose from (e.g. {prefix}=1|2|4)")
        weights[prefix] = choices
    return weights


def _weight_text(weight: float) -> str:
    """Short where that is exact (4, not 4.0), else every digit: settings.json must give back the same weight."""
    short = f"{weight:g}"
    return short if float(short) == weight else repr(weight)


def _parts_text(pairs: dict) -> str:
    return ",".join(f"{p}={'|'.join(map(_weight_text, v)) if isinstance(v, tuple) else v}" for p, v in pairs.items())


def part_weights_text(chosen: dict[str, float]) -> str:
    """merge.part-weights as a run config gives it, for one weight per part (what compare chose)."""
    return _parts_text({part: (float(weight),) for part, weight in chosen.items()})


def _check_kind(name: str) -> None:
    if name:
        get_kind(name)  # the registry refuses an unknown name, listing the kinds it knows


def _check_strategy(name: str) -> None:
    known = {s for k in list_kinds() for s in get_kind(k).strategies()}  # those of explicitly chosen kinds too
    if name not in known:
        raise UnknownNameError("strategy", name, known)


def _check_norm_factor(value: float) -> None:
    if not (value == 0 or value >= 1):
        raise ConfigError("guard.norm-factor must be 0 (off) or >= 1")


@dataclass(frozen=True)
class RunSettings:
    """Settings of the run itself: no group of their own, or model.* / lora.site-ranks read by the run."""

    PREFIX: ClassVar[str] = ""

    sites: tuple[SiteSpec, ...] = setting("blood,breast,organa,pneumonia", "one site per modality; `name:N` "
                                          "splits a modality across N sites; a site with its own images: `cxr` (its "
                                          "node names the dataset) or `cxr=folder:DIR` (README: Bring your own data)",
                                          parse=_sites, show=_sites_text,
                                          accepts="MedMNIST names or own-data sites (`cxr=folder:DIR`), each once")
    strategy: str = setting("medlego", "merge method (`fl-medlego merge --list`), or `vit_avg`: full fine-tuning "
                            "at the sites and weight averaging (site kind `full`)", check=_check_strategy,
                            accepts="a strategy of a site kind")
    kind_name: str = setting("", "the site kind; \"\" = the one the strategy implies (adapter merges, `vit_avg`); "
                             "`cross-modal`: SVD-LoRA in an image and a text tower, classes from prompts "
                             "(docs/cross-modal.md)", key="kind", check=_check_kind,
                             accepts="\"\" or a site kind")
    num_rounds: int = setting(3, "federated rounds (round 1 trains the specialists from the base)", low=1)
    seed: int = setting(0, "seed of everything drawn: data partitions, initialisations, batches", low=0)
    output_dir: str = setting("outputs", "where run folders go; relative = under ~/fl-medlego/")
    round_timeout: float = setting(1800.0, "seconds to wait for the sites' replies in one round", above=0)
    node_wait_timeout: float = setting(120.0, "seconds to wait for every site's node to connect", above=0)
    min_sites: int = setting(0, "sites a round must combine to count; 0 = every declared site in round 1, then "
                             "half of them (rounded up). A round below it fails the run", low=0)
    site_nodes: dict = setting("", "bind sites to nodes (`blood=NODE_ID,...`, ids from `flwr supernode list`); "
                               "without it, two nodes claiming one site stop the run", parse=_site_nodes,
                               show=_site_nodes_text, accepts="site=NODE_ID,...")
    resume: str = setting("", "a run folder: continue that run from its last complete round (same settings)")
    messages_per_node: int = setting(2, "messages the coordinator keeps waiting at each node at once; 0 = a "
                                     "round's all at once (docs/performance.md, \"Scale\")", low=0)
    model_name: str = setting("vit_medmnist_28", "backbone preset or timm name", key="model.name",
                              check=check_backbone_name, accepts="a preset or a timm model name")
    pretrained: str = setting("bundled", "`bundled` (the base shipped with the package), `none` (seeded random "
                              "init), `timm` or a checkpoint path", key="model.pretrained",
                              accepts="bundled, none, timm or a path")
    base_fingerprint: str = setting("", "the base every site must have trained on; \"\" = the coordinator builds "
                                    "the base and fingerprints it", key="model.fingerprint")
    site_ranks: tuple[int, ...] = setting((), "per-site adapter ranks, cycled over the sites, e.g. `2,4,8` "
                                          "(\"\" = lora.rank for all)", key="lora.site-ranks", low=1)


@dataclass(frozen=True)
class DataSettings:
    PREFIX: ClassVar[str] = "data."

    root: str = setting("bundled", "`bundled` sample in the package; a folder of MedMNIST `.npz` files, that "
                        "folder only (a missing file is an error, never a download); or \"\" for $MEDMNIST_ROOT "
                        "if set, else ~/.medmnist, downloading there the sets missing")
    image_size: int = setting(28, "the MedMNIST file size (images are resized to the model's input)",
                              choices=MEDMNIST_SIZES)
    partition: str = setting("iid", "how a modality split across sites is divided (`dirichlet`: label skew; "
                             "`sample`: each site draws max-train / max-eval images of its own, sites may share "
                             "images: for more sites than images, as in scale tests)", choices=PARTITIONS)
    dirichlet_alpha: float = setting(0.5, "label skew of `dirichlet` (smaller = stronger)", above=0)
    max_train: int = setting(0, "cap on training images per site (0 = all)", low=0,
                             accepts=">= 0 (0 = all)")
    max_eval: int = setting(0, "cap on validation / test images per site (0 = all)", low=0,
                            accepts=">= 0 (0 = all)")

    def __post_init__(self) -> None:
        check_group(self)
        if self.partition == "sample" and (self.max_train <= 0 or self.max_eval <= 0):
            raise ConfigError("data.partition='sample' draws data.max-train and data.max-eval images per site: set "
                              "both above 0 (e.g. data.max-train=16 data.max-eval=8)")


@dataclass(frozen=True)
class GuardSettings:
    """Bounds on a site's update, checked by the server before anything is combined.

    An update whose norm (Frobenius, of what it changes) exceeds `norm_factor` x the round's lower
    median norm, or `max_norm` when set, is clipped to that bound or rejected. The lower median: with
    two sites it is the smaller norm, so one site alone cannot set its own bound. 3 leaves room for
    honest sites whose data differ (their norms were within 2x of each other here) while bounding what
    one site can do to the combined update.
    """

    PREFIX: ClassVar[str] = "guard."

    norm_factor: float = setting(3.0, "an update over this x the round's lower-median norm is clipped or "
                                 "rejected (0 = off)", low=0, check=_check_norm_factor,
                                 accepts="0 or >= 1")
    max_norm: float = setting(0.0, "an absolute bound on an update's norm (0 = none)", low=0)
    action: str = setting(GUARD_ACTIONS[0], "what happens to an update over the bound", choices=GUARD_ACTIONS)

    def __post_init__(self) -> None:
        check_group(self)


@dataclass(frozen=True)
class MergeSettings:
    """How the server combines the sites' updates: the strategy and its validated options.

    energy, max_rank and options_text are what the run config says; `options` is the method's own
    options object built from them (None where it has none), which `compare` may tune (`with_options`).
    """

    PREFIX: ClassVar[str] = "merge."

    energy: float = setting(MedLegoOptions.energy, "Med-LEGO's threshold v: keep the top singular values holding "
                            "this fraction of the mass (any method with an `energy` option)", above=0, high=1)
    max_rank: int = setting(MedLegoOptions.max_rank or 0, "cap on the merged rank (0 = no cap)", low=0,
                            accepts=">= 0 (0 = no cap)")
    weighting: str = setting(WEIGHTINGS[0], "site weights (`examples` weighs by data size)", choices=WEIGHTINGS)
    options_text: str = setting("", "method-specific options, e.g. strategy='ties' merge.options='density=0.5 "
                                "lam=0.7'", key="merge.options")
    part_methods: dict = setting("", "adapter kinds: the matrices under a name prefix merged with another method "
                                 "(its default options; merge.energy and merge.max-rank where it has them), e.g. "
                                 "'projection=task_arithmetic'; cross-modal parts: image, projection, and text when "
                                 "cross-modal.towers adapts it", key="merge.part-methods", parse=_part_methods,
                                 show=_parts_text, accepts="PREFIX=METHOD,... ('' = none)")
    part_weights: dict = setting("", "adapter kinds: a factor on the merged update under a name prefix, e.g. "
                                 "'projection=4'; 'image=1|2|4,projection=4' lets compare choose on validation",
                                 key="merge.part-weights", parse=_part_weights, show=_parts_text,
                                 accepts="PREFIX=WEIGHT,... (WEIGHT > 0, or W1|W2|... for compare; '' = none)")
    method: str = ""  # the strategy
    options: object | None = None  # an instance of the method's options dataclass; None where it has none
    part_options: dict = dataclasses.field(default_factory=dict)  # prefix -> (method, its options object)

    def __post_init__(self) -> None:
        check_group(self)

    @property
    def parts(self) -> PartMerge:
        """The part-by-part merge a combination uses; refused while a part still has several weights."""
        undecided = sorted(p for p, choices in self.part_weights.items() if len(choices) > 1)
        if undecided:
            raise ConfigError(f"merge.part-weights gives several weights for {undecided}: `fl-medlego compare` "
                              "chooses one on validation, a run or a single combination takes one per part, e.g. "
                              f"merge.part-weights='{undecided[0]}={self.part_weights[undecided[0]][0]:g}'")
        return PartMerge(dict(self.part_options), {p: choices[0] for p, choices in self.part_weights.items()})

    def for_round(self, server_round: int) -> MergeSettings:
        """The settings a round combines with. Part weights scale round 1's merge, of updates trained from the
        base; later rounds' updates start from that weighted merge and already carry the weight, so weighting
        them again would compound it (w, w^2, ...)."""
        return self if server_round == 1 or not self.part_weights else dataclasses.replace(self, part_weights={})

    def part_weight_grid(self) -> list[dict[str, float]]:
        """Every combination of the parts' weight alternatives (one empty dict when no part has weights)."""
        prefixes = list(self.part_weights)
        return [dict(zip(prefixes, values)) for values in itertools.product(*self.part_weights.values())]

    def with_part_weights(self, chosen: dict[str, float]) -> MergeSettings:
        """The same settings with one weight per part (as compare chose them)."""
        return dataclasses.replace(self, part_weights={**self.part_weights, **{p: (w,) for p, w in chosen.items()}})

    def with_options(self, **values) -> MergeSettings:
        """The same settings with some options replaced (validated again by the options type)."""
        if not values:
            return self
        if self.options is None:
            raise ConfigError(f"strategy {self.method!r} has no options to set, got {sorted(values)}")
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **values))


@dataclass(frozen=True)
class NewTaskSettings:
    """The new_task scenario: one site held out of the merge, then learned from the merged update and the base."""

    PREFIX: ClassVar[str] = "new-task."

    site: str = setting("", "new_task scenario: the site held out of the merge (\"\" = none)")
    epochs: int = setting(8, "new_task scenario: epochs of each learning curve", low=1)

    def __post_init__(self) -> None:
        check_group(self)


@dataclass(frozen=True, kw_only=True)
class RunConfig(RunSettings):
    """Everything a run is configured with: the run's own settings (`RunSettings`, with the site kind
    resolved and the sites as objects) and every group, parsed and checked."""

    lora: SVDLoRAConfig
    merge: MergeSettings
    train: TrainConfig
    data: DataSettings
    guard: GuardSettings
    privacy: PrivacySettings
    new_task: NewTaskSettings
    kind_groups: dict  # kind name -> its settings_type's instance, for every kind that declares settings

    @property
    def kind_settings(self) -> object | None:
        """The settings of the run's own site kind (None when it declares none)."""
        return self.kind_groups.get(self.kind_name)

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

    def kind_context(self, kind_name: str | None = None) -> KindContext:
        """The narrow settings a site kind is built with (the run's kind, or another one by name: compare's
        reference specialists and the multi-task model use the adapter and full kinds' settings)."""
        name = kind_name or self.kind_name
        return KindContext(model_name=self.model_name, pretrained=self.pretrained, seed=self.seed,
                           image_size=self.image_size, lora=self.lora, train=self.train,
                           settings=self.kind_groups.get(name),
                           site_ranks=dict(self._ranks),
                           site_flags=tuple(s.flag for s in self.sites if s.flag))

    def kind_site(self, kind_name: str | None = None) -> KindSite:
        """The site half of the run's kind (or of another kind by name)."""
        return get_kind(kind_name or self.kind_name).site(self.kind_context(kind_name))

    def kind_server(self, kind_name: str | None = None) -> KindServer:
        """The server half of the run's kind (or of another kind by name)."""
        return get_kind(kind_name or self.kind_name).server(self.kind_context(kind_name))

    @functools.cached_property
    def _ranks(self) -> dict[str, int]:
        """Every site's adapter rank by name, worked out once: each message asks for the whole run's, and a
        search of the site list per site made that quadratic (seconds a message with 10,000 sites)."""
        if not self.site_ranks:
            return {s.name: self.lora.rank for s in self.sites}
        return {s.name: self.site_ranks[i % len(self.site_ranks)] for i, s in enumerate(self.sites)}

    def rank_of(self, site: str) -> int:
        """Adapter rank of a site: lora.rank unless lora.site-ranks is set (then by the site's position)."""
        return self._ranks.get(site, self.lora.rank)

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


def setting_groups() -> list[type]:
    """Every group of settings: the run's, then each registered kind's own (`settings_type`)."""
    kinds = [type(get_kind(name)).settings_type for name in list_kinds()]
    return [RunSettings, SVDLoRAConfig, MergeSettings, TrainConfig, DataSettings, GuardSettings, PrivacySettings,
            NewTaskSettings, *dict.fromkeys(k for k in kinds if k is not None)]


# Every key with its default, as a user writes it (scenario pyprojects repeat them: Flower requires every key).
DEFAULTS: dict[str, object] = default_table(setting_groups())


# Settings added after results files were first written (add a new setting here): a file without one was
# written before it existed, when the code did what the setting's default does.
ADDED_LATER = ("merge.part-methods", "merge.part-weights", "cross-modal.tune-on")


def with_new_defaults(stored: dict) -> dict:
    """Settings a results file stored, completed with the defaults of the settings added since (ADDED_LATER), so
    an older comparison still resumes, combines and pairs with a newer one."""
    defaults = json.loads(json.dumps(DEFAULTS, default=str))
    return {**{key: defaults[key] for key in ADDED_LATER}, **stored}


def _resolve_kind(run: RunSettings) -> SiteKind:
    kind = get_kind(run.kind_name) if run.kind_name else kind_for_strategy(run.strategy)
    if run.strategy not in kind.strategies():
        raise ConfigError(f"strategy={run.strategy!r} is refused: strategy {run.strategy!r} does not run sites of "
                          f"kind {kind.name!r}; its strategies: {', '.join(kind.strategies())}")
    return kind


def _merge_settings(flat: dict, kind: SiteKind, strategy: str) -> MergeSettings:
    merge = parse_group(MergeSettings, flat, method=strategy)
    shared = {"energy": merge.energy, "max_rank": merge.max_rank or None}
    try:
        options = kind.merge_options(strategy, shared, parse_overrides(merge.options_text))
    except (TypeError, ValueError) as err:  # UserError included: say which key it came from
        raise ConfigError(f"merge.options={merge.options_text!r} is refused for strategy {strategy!r}: {err}") from None
    try:
        part_options = kind.part_merge_options(merge.part_methods, shared, bool(merge.part_weights))
    except (TypeError, ValueError) as err:
        key, value = (("merge.part-methods", merge.part_methods) if merge.part_methods
                      else ("merge.part-weights", merge.part_weights))
        raise ConfigError(f"{key}={_parts_text(value)!r} is refused: {err}") from None
    return dataclasses.replace(merge, options=options, part_options=part_options)


def _check_new_task_privacy(privacy: PrivacySettings, new_task: NewTaskSettings) -> None:
    if privacy.private and new_task.site:
        raise ConfigError("privacy.mode='dp-sgd' does not cover the new_task scenario's learning curves: "
                          "leave new-task.site empty or privacy.mode='none'")


def _check_keys(run_config: dict) -> None:
    known = {s.key for g in setting_groups() for s in settings_of(g)}
    unknown = sorted(set(run_config) - known)
    if unknown:
        renamed = [f"{old} is now {RENAMED[old]}" for old in unknown if old in RENAMED]
        hint = f" ({'; '.join(renamed)})" if renamed else ""
        raise ConfigError(f"unknown run config key(s) {unknown}{hint}; known keys: {', '.join(sorted(known))}")


def parse_run_config(run_config: dict) -> RunConfig:
    """Typed settings from a Flower run config; a bad key or value is one ConfigError line naming the key."""
    _check_keys(run_config)
    run = parse_group(RunSettings, run_config)
    kind = _resolve_kind(run)
    lora = parse_group(SVDLoRAConfig, run_config)
    new_task = parse_group(NewTaskSettings, run_config)
    privacy = parse_group(PrivacySettings, run_config)
    check_private_kind(privacy, kind, run.strategy)  # the privacy layer says which kinds it can wrap
    _check_new_task_privacy(privacy, new_task)
    kind_groups = {name: parse_group(group, run_config) for name in list_kinds()
                   if (group := type(get_kind(name)).settings_type) is not None}
    own = {f.name: getattr(run, f.name) for f in dataclasses.fields(RunSettings)}
    return RunConfig(
        **{**own, "kind_name": kind.name}, lora=lora, merge=_merge_settings(run_config, kind, run.strategy),
        train=parse_group(TrainConfig, run_config, orth_weight=lora.orth_weight, seed=run.seed),
        data=parse_group(DataSettings, run_config), guard=parse_group(GuardSettings, run_config), privacy=privacy,
        new_task=new_task, kind_groups=kind_groups)


def settings_table(cfg: RunConfig) -> dict[str, object]:
    """Every setting of the run by the key a user types -> its value as typed (JSON-friendly; settings.json)."""
    groups = (cfg, cfg.lora, cfg.merge, cfg.train, cfg.data, cfg.guard, cfg.privacy, cfg.new_task,
              *cfg.kind_groups.values())
    return {key: value for group in groups for key, value in group_table(group).items()}
