"""The default scenario's work without Flower: the same library calls, in the order the apps make them.

Each round every site trains (from the base, then from the combined update), its update crosses the
wire encoding, the server combines the decoded updates, and every site evaluates the result (and, once, its
specialist). Used to hold today's numbers against a stored summary, and by benchmarks.overhead as the
plain baseline.
"""

from __future__ import annotations

from collections.abc import Callable

from fl_medlego.config import parse_run_config
from fl_medlego.site import load_site_data
from fl_medlego.train import EpochReport


def plain_federation(run_config: dict, on_epoch: Callable[[str, EpochReport], None] | None = None,
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """site -> {"specialist": test metrics, "merged": test metrics after the last round}.

    on_epoch(site, report) after each local epoch, as the ClientApp logs it.
    """
    cfg = parse_run_config(run_config)
    kind = cfg.kind
    template = kind.template(cfg)
    states, combined, specialist, merged = dict.fromkeys(cfg.site_names), None, {}, {}
    for _ in range(cfg.num_rounds):
        updates = []
        for site in cfg.site_names:
            report = (lambda r, site=site: on_epoch(site, r)) if on_epoch else None
            trained = kind.train(cfg, load_site_data(cfg, site), combined, states[site], on_epoch=report)
            states[site] = trained.state
            updates.append(kind.decode(kind.encode(trained.update), template))
        combined = kind.decode(kind.encode(kind.combine(updates, None, cfg.merge)), template)
        for site in cfg.site_names:
            data = load_site_data(cfg, site)
            merged[site] = kind.evaluate(cfg, data, combined, states[site].head)
            if site not in specialist:  # a specialist does not change: evaluated once, as the strategy asks
                specialist[site] = kind.evaluate(cfg, data, states[site].specialist, states[site].specialist_head)
    return {site: {"specialist": specialist[site], "merged": merged[site]} for site in cfg.site_names}
