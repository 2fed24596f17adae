"""The coordinator: a Flower ServerApp that merges the sites' SVD-LoRA adapters round by round."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fl_medlego.config import RunConfig, parse_run_config, settings_table
from fl_medlego.data import parse_sites
from fl_medlego.full_finetune import FULL_WEIGHT_STRATEGY, backbone_template
from fl_medlego.memory import peak_rss_mb
from fl_medlego.merging import get_merge
from fl_medlego.report import summary_table
from fl_medlego.results import RunResults
from fl_medlego.site import adapter_template

from .discovery import discover_sites
from .strategy import FullWeightStrategy, LowRankMergeStrategy

log = logging.getLogger(__name__)
app = ServerApp()


@dataclass
class Federation:
    cfg: RunConfig
    run_dir: Path
    site_nodes: dict[str, int]  # every declared site that a node hosts
    strategy: LowRankMergeStrategy
    merged: ArrayRecord  # the last merged adapter


def run_federation(grid: Grid, context: Context, held_out: tuple[str, ...] = ()) -> Federation:
    """Discover the sites, run the rounds with the configured merge (without `held_out` sites), write the summary."""
    cfg = parse_run_config(context.run_config)
    full_weight = cfg.strategy == FULL_WEIGHT_STRATEGY
    options = {}
    if not full_weight:
        merge = get_merge(cfg.strategy)  # fails before any training if the strategy name or its options are wrong
        options = cfg.merge.options_for(list(merge.options_type.__dataclass_fields__))
        merge.make_options(**options)
    run_dir = cfg.output_path(f"{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}-{context.run_id}")
    results = RunResults(run_dir, settings_table(cfg))
    print(f"fl-medlego: results of this run go to {run_dir}", flush=True)

    declared = [s.name for s in parse_sites(cfg.sites)]
    site_nodes = discover_sites(grid, declared, cfg.node_wait_timeout)
    merging = {s: n for s, n in site_nodes.items() if s not in held_out}
    if full_weight:
        strategy = FullWeightStrategy(merging, backbone_template(cfg), cfg.strategy, {}, cfg.merge.weighting, results)
    else:
        strategy = LowRankMergeStrategy(merging, adapter_template(cfg), cfg.strategy, options, cfg.merge.weighting,
                                        results)
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
