"""The coordinator: a Flower ServerApp that combines the sites' updates round by round (Med-LEGO by default)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fl_medlego.config import RunConfig, parse_run_config, settings_table
from fl_medlego.memory import peak_rss_mb
from fl_medlego.report import summary_table
from fl_medlego.results import RunResults

from .discovery import discover_sites
from .strategy import SiteMergeStrategy

log = logging.getLogger(__name__)
app = ServerApp()


@dataclass
class Federation:
    cfg: RunConfig
    run_dir: Path
    site_nodes: dict[str, int]  # every declared site that a node hosts
    strategy: SiteMergeStrategy
    merged: ArrayRecord  # the last combined update


def run_federation(grid: Grid, context: Context, held_out: tuple[str, ...] = ()) -> Federation:
    """Discover the sites, run the rounds with the configured merge (without `held_out` sites), write the summary."""
    cfg = parse_run_config(context.run_config)  # fails before any training on a wrong strategy or option
    run_dir = cfg.output_path(f"{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}-{context.run_id}")
    results = RunResults(run_dir, settings_table(cfg))
    print(f"fl-medlego: results of this run go to {run_dir}", flush=True)

    declared = cfg.site_names
    site_nodes = discover_sites(grid, declared, cfg.node_wait_timeout)
    merging = {s: n for s, n in site_nodes.items() if s not in held_out}
    strategy = SiteMergeStrategy(merging, cfg.kind.template(cfg), cfg, results)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=cfg.num_rounds,
                            timeout=cfg.round_timeout, train_config=ConfigRecord(), evaluate_config=ConfigRecord())

    summary = results.write_summary(strategy.specialist, strategy.merged,
                                    extra={"sites_missing": [s for s in declared if s not in site_nodes],
                                           "sites_held_out": list(held_out), "server_peak_rss_mb": peak_rss_mb()})
    Console(width=120).print(summary_table(summary))
    print(f"fl-medlego: summary written to {run_dir / 'summary.md'} and {run_dir / 'summary.json'}", flush=True)
    return Federation(cfg, run_dir, site_nodes, strategy, result.arrays)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, context)
