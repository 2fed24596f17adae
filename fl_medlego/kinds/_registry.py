"""Site kinds by name: what a site trains and sends, and how the server combines it.

A kind is one module here. Its class declares what the rest of the project iterates over (its
strategies, its settings group, its metric schema, its report columns, the reference rows and labels
of `fl-medlego compare`) and makes its two halves, bound to a narrow `KindContext`:

    kind = kind_for_strategy("medlego")                 # the adapter kind
    site = kind.site(cfg.kind_context())                # build, train, evaluate (the ClientApp's side)
    server = kind.server(cfg.kind_context())            # codec, norm, scale, combine (the Strategy's side)
    update = server.decode(server.encode(site.train(data, None, None).update), server.template())

The apps, the strategy, the reports and `fl-medlego compare` are written once over these; nothing
outside this package asks which kind it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from .. import wire
from ..errors import UnknownNameError
from ._context import KindContext
from ._server import NO_PARTS, KindServer
from ._site import KindSite


@dataclass(frozen=True)
class ReportColumns:
    """A kind's own section of a run's summary.md and of the comparison table, shown where its metrics are.

    columns: metric -> label, in order (both tables; the comparison's CSV too); summary_text / compare_text:
    what the section's numbers mean; compare_first: columns only the comparison shows, before them;
    per_site: (metric, label) shown per site in the comparison ("<site> <label>")."""

    title: str
    columns: dict[str, str]
    summary_text: tuple[str, ...] = ()
    compare_text: str = ""
    compare_first: dict[str, str] = field(default_factory=dict)
    per_site: tuple[tuple[str, str], ...] = ()


class SiteKind(ABC):
    """What a kind declares, and the factories of its halves."""

    name: ClassVar[str]
    summary: ClassVar[str]
    specialist_label: ClassVar[str]  # how comparison tables name this kind's specialists
    # Its own settings: a dataclass with a PREFIX whose fields are declared with fl_medlego.settings.setting
    # (the run config parses every kind's group; the kind's context carries the run's).
    settings_type: ClassVar[type | None] = None
    # Its metric schema: what a train reply carries, what an evaluation adds to wire.EVAL_METRICS, the range of
    # each name wire does not declare already (name -> (low, high, integral)), and which may be NaN.
    train_metrics: ClassVar[tuple[str, ...]] = (wire.VAL_ACC, wire.TRAIN_LOSS, wire.BEST_EPOCH, wire.NUM_EXAMPLES)
    evaluate_metrics: ClassVar[tuple[str, ...]] = (wire.MAJORITY_RATE,)  # the test split's, for the reports
    metric_schema: ClassVar[dict[str, tuple[float, float, bool]]] = {}
    undefined_metrics: ClassVar[frozenset[str]] = frozenset()
    report: ClassVar[ReportColumns | None] = None
    untrained_rows: ClassVar[tuple[str, ...]] = ()  # compare rows of its untrained model (no update, no head)
    supports_privacy: ClassVar[bool] = False  # its training step may be wrapped in DP-SGD (fl_medlego.privacy)
    saves_adapters: ClassVar[bool] = False  # its updates are SVD-LoRA adapter folders (`fl-medlego evaluate`)
    # Runs only when the run config names it (`kind`): its strategies are another kind's names too.
    chosen_explicitly: ClassVar[bool] = False
    site_type: ClassVar[type[KindSite]]
    server_type: ClassVar[type[KindServer]]

    def site(self, context: KindContext) -> KindSite:
        """The site half: build, train, evaluate, keep."""
        return self.site_type(self, context)

    def server(self, context: KindContext) -> KindServer:
        """The server half: the update's codec and disk format, its norm, scaling and combination."""
        return self.server_type(self, context)

    @abstractmethod
    def strategies(self) -> list[str]:
        """The strategy names (run config `strategy`) that run sites of this kind."""

    @abstractmethod
    def merge_options(self, strategy: str, shared: dict, options: dict) -> object | None:
        """The strategy's validated options object (None when it has none); raises on a bad option.

        shared: options the run config sets for every method that has them (merge.energy, merge.max-rank);
        options: the strategy's own (merge.options).
        """

    def option_grid(self, strategy: str) -> list[dict]:
        """Option values `fl-medlego compare` tries on validation splits (one empty dict: nothing to tune)."""
        return [{}]

    def part_merge_options(self, methods: dict[str, str], shared: dict, weighted: bool) -> dict[str, tuple]:
        """prefix -> (method, its validated options) for merge.part-methods; raises where the kind's updates
        have no named parts to merge apart (weighted: merge.part-weights names some)."""
        if methods or weighted:
            raise ValueError(NO_PARTS.format(kind=self.name))
        return {}

    def specialists_row(self) -> str:
        """The comparison row of this kind's specialists (the site's own model, not an assembled one)."""
        return f"specialists ({self.specialist_label})"

    def comparison_strategies(self) -> list[str] | None:
        """What `compare` runs for a scenario of this kind: its own strategies where it stands alone, or None
        for every strategy a name selects by itself and the references beside them."""
        return self.strategies() if self.chosen_explicitly else None


_KINDS: dict[str, SiteKind] = {}
# Whose specialists are the ceiling of the normalized ACC (the paper's: SVD-LoRA adapters).
REFERENCE_KIND = "adapter"


def register_kind(cls: type[SiteKind]) -> type[SiteKind]:
    """Class decorator: register one instance of the kind under its `name`, and declare its metrics on the wire."""
    if cls.name in _KINDS:
        raise ValueError(f"site kind {cls.name!r} is registered twice")
    # The round's aggregate averages these and weighting by examples reads the count: every kind must send them.
    required = [n for n in (*wire.ROUND_MEAN_METRICS, wire.NUM_EXAMPLES) if n not in cls.train_metrics]
    if required:
        raise ValueError(f"site kind {cls.name!r}: its train_metrics lack {required}, which every round needs: "
                         "add them to train_metrics")
    schema = dict(cls.metric_schema)
    schema |= {wire.SPECIALIST_PREFIX + n: schema[n] for n in cls.evaluate_metrics if n in schema}
    undefined = {*cls.undefined_metrics, *(wire.SPECIALIST_PREFIX + n for n in cls.undefined_metrics
                                           if n in cls.evaluate_metrics)}
    wire.declare_metrics(schema, undefined)
    missing = [n for n in (*cls.train_metrics, *cls.evaluate_metrics) if n not in wire.METRIC_SCHEMA]
    if missing:
        raise ValueError(f"site kind {cls.name!r}: metrics {missing} have no range: declare them in metric_schema")
    _KINDS[cls.name] = cls()
    return cls


def unregister_kind(name: str) -> None:
    """Forget a kind registered for a while (a test's toy kind); its metric ranges stay declared."""
    get_kind(name)
    del _KINDS[name]


def get_kind(name: str) -> SiteKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownNameError("site kind", name, list_kinds()) from None


def list_kinds() -> list[str]:
    return sorted(_KINDS)


def ceiling_kind() -> SiteKind:
    """The kind whose specialists every comparison trains: the normalized ACC divides by their ACC."""
    return _KINDS[REFERENCE_KIND]


def kind_for_strategy(strategy: str) -> SiteKind:
    """The kind whose sites a strategy runs on (unless the run config names one); an unknown strategy lists
    every known one."""
    for kind in _KINDS.values():
        if not kind.chosen_explicitly and strategy in kind.strategies():
            return kind
    raise UnknownNameError("strategy", strategy, all_strategies())


def all_strategies() -> list[str]:
    """Every strategy name of the kinds a strategy name selects by itself (each name once)."""
    return [s for name in list_kinds() if not _KINDS[name].chosen_explicitly for s in _KINDS[name].strategies()]
