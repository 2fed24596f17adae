"""The default scenario's work without Flower: the same library calls, in the order the apps make them.

Each round every site trains (from the base, then from the combined update), its update crosses the
wire encoding, the server combines the decoded updates, and every site evaluates the result and its
specialist. Used to hold today's numbers against a stored summary, and by benchmarks.overhead as the
plain baseline.
"""

from __future__ import annotations

from fl_medlego.config import parse_run_config
from fl_medlego.site import load_site_data


def plain_federation(run_config: dict) -> dict[str, dict[str, dict[str, float]]]:
    """site -> {"specialist": test metrics, "merged": test metrics after the last round}."""
    cfg = parse_run_config(run_config)
    kind = cfg.kind
    template = kind.template(cfg)
    states, combined, results = dict.fromkeys(cfg.site_names), None, {}
    for _ in range(cfg.num_rounds):
        updates = []
        for site in cfg.site_names:
            trained = kind.train(cfg, load_site_data(cfg, site), combined, states[site])
            states[site] = trained.state
            updates.append(kind.decode(kind.encode(trained.update), template))
        combined = kind.decode(kind.encode(kind.combine(updates, None, cfg.merge)), template)
        for site in cfg.site_names:
            data = load_site_data(cfg, site)
            results[site] = {"merged": kind.evaluate(cfg, data, combined, states[site].head),
                             "specialist": kind.evaluate(cfg, data, states[site].specialist,
                                                         states[site].specialist_head)}
    return results
