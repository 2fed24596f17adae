"""The coordinator: a Flower ServerApp that combines the sites' updates round by round (Med-LEGO by default)."""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fl_medlego.config import RunConfig, parse_run_config, settings_table
from fl_medlego.errors import UserError
from fl_medlego.memory import peak_rss_mb
from fl_medlego.privacy.coordinator import coordinator_layers, privacy_summary
from fl_medlego.report import summary_table
from fl_medlego.results import RunResults

from .discovery import discover_sites, require_quorum
from .strategy import RoundFailed, SiteMergeStrategy
from .window import WindowedGrid

log = logging.getLogger(__name__)
app = ServerApp()


@dataclass
class Federation:
    cfg: RunConfig
    run_dir: Path
    site_nodes: dict[str, int]  # every declared site that a node hosts
    strategy: SiteMergeStrategy
    merged: ArrayRecord  # the last combined update


def run_federation(grid: Grid, context: Context, held_out: tuple[str, ...] = (),
                   on_strategy: Callable[[SiteMergeStrategy], None] | None = None,
                   after_rounds: Callable[[Federation], None] | None = None) -> Federation:
    """Discover the sites, run the rounds with the configured merge (without `held_out` sites), write the summary.

    held_out: sites kept out of the merge that the caller uses afterwards: the run fails before any round when
    no node hosts one. on_strategy: called with the strategy once it is built (tests and in-process runs read
    its state). after_rounds: called with the federation once its rounds completed and its summary is written,
    while the run still holds its folder, for a scenario's own step that writes into it (new_task's curves);
    after the summary, so that a failure of that step leaves the rounds' summary in place."""
    cfg = parse_run_config(context.run_config)  # fails before any training on a wrong strategy or option
    cfg.kind_server().check_merge(cfg.merge)  # and on merge parts that name no matrix or hold several weights
    if cfg.resume:
        run_dir = Path(cfg.resume).expanduser().resolve()
    else:
        run_dir = cfg.output_path(f"{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}-{context.run_id}")
    results = RunResults(run_dir, settings_table(cfg), resume=bool(cfg.resume), may_change=RESUMABLE_CHANGES,
                         run_id=context.run_id)
    try:  # the folder's lock must not outlive the run, however it ends
        fed = _federate(grid, cfg, results, held_out, on_strategy)
        if after_rounds is not None:
            after_rounds(fed)
        return fed
    finally:
        results.release()


def _federate(grid: Grid, cfg: RunConfig, results: RunResults, held_out: tuple[str, ...],
              on_strategy: Callable[[SiteMergeStrategy], None] | None) -> Federation:
    run_dir = results.run_dir
    print(f"fl-medlego: results of this run go to {run_dir}", flush=True)

    declared = cfg.site_names
    base_fingerprint, reference = federation_base(cfg)  # from the run's own configuration, never from replies
    done, state = results.last_complete_round()
    arrays = ArrayRecord()
    if done:  # a resumed run: go on from the last complete round's combined update
        if state.get("base_fingerprint") != base_fingerprint:
            raise RuntimeError(f"{run_dir} was run on base {state.get('base_fingerprint')}, not {base_fingerprint}")
        update = cfg.kind_server().load(results.round_dir(done), base_fingerprint)
        arrays = ArrayRecord(cfg.kind_server().encode(update))
        reference = update if reference is not None else None
        print(f"fl-medlego: resuming after round {done} of {cfg.num_rounds}", flush=True)
    site_nodes = discover_sites(grid, declared, cfg.node_wait_timeout, pinned=cfg.site_nodes)
    unhosted = [s for s in held_out if s not in site_nodes]
    if unhosted:  # its step after the rounds could not run: fail before any site trains
        raise UserError(f"no node hosts the held-out site(s) {unhosted}: start a SuperNode with --node-config "
                        f"\"site='{unhosted[0]}'\", or hold out a site that a node hosts ({sorted(site_nodes)})")
    merging = {s: n for s, n in site_nodes.items() if s not in held_out}
    merging_declared = [s for s in declared if s not in held_out]
    if cfg.num_rounds > done:  # no round can count: fail before any site trains
        require_quorum(merging, merging_declared, cfg.required_sites(done + 1, len(merging_declared)), done + 1)
    layers = coordinator_layers(cfg.privacy, state)
    strategy = SiteMergeStrategy(merging, cfg.kind_server().template(), cfg, results, base_fingerprint, reference,
                                 declared=[s for s in declared if s not in held_out], resumed=(done, state),
                                 layers=layers)
    if on_strategy is not None:
        on_strategy(strategy)
    failure, internal = None, None
    try:
        if cfg.num_rounds > done:
            window = WindowedGrid(grid, cfg.messages_per_node) if cfg.messages_per_node else grid
            arrays = strategy.start(grid=window, initial_arrays=arrays, num_rounds=cfg.num_rounds - done,
                                    timeout=cfg.round_timeout, train_config=ConfigRecord(),
                                    evaluate_config=ConfigRecord(), evaluate_fn=strategy.commit_round).arrays
    except RoundFailed as err:
        failure = str(err)
    except Exception as err:  # our own fault: the summary says what happened, errors.log has the traceback
        internal = err
        log_path = results.log_internal_error(f"the run failed: {type(err).__name__}: {err}", traceback.format_exc())
        failure = f"internal error {type(err).__name__}: {err} (traceback in {log_path})"
    privacy = privacy_summary(layers, cfg.privacy)
    summary = results.write_summary(strategy.specialist, strategy.merged, extra={
        "status": f"failed: {failure}" if failure else "completed", "site_status": strategy.status,
        "sites_missing": [s for s in declared if s not in site_nodes], "sites_held_out": list(held_out),
        "base_fingerprint": base_fingerprint, "server_peak_rss_mb": peak_rss_mb(), "privacy": privacy})
    Console(width=120).print(summary_table(summary))
    print(f"fl-medlego: summary written to {run_dir / 'summary.md'} and {run_dir / 'summary.json'}", flush=True)
    if failure:  # the run must end failed, not "completed" with too few sites
        raise RuntimeError(f"fl-medlego: the run failed: {failure}") from internal
    return Federation(cfg, run_dir, site_nodes, strategy, arrays)


# What a resumed run may change: where and how long it waits, which nodes serve the sites.
RESUMABLE_CHANGES = ("resume", "round-timeout", "node-wait-timeout", "site-nodes", "min-sites", "messages-per-node")


def federation_base(cfg: RunConfig) -> tuple[str, object | None]:
    """The base fingerprint every site must share, and what the first round's updates are measured from (None
    for kinds whose update is its own size): the kind's server half decides, from model.name /
    model.pretrained / seed as the sites build the base, or from model.fingerprint (a coordinator without the
    base's weights)."""
    return cfg.kind_server().federation_base(cfg.base_fingerprint)


class RunRefused(UserError):
    """A run refused for the user's mistake (a setting, missing data, an absent site): the message names the
    problem and the fix; raised by the ServerApps' main without the chain of the error it replaces."""


def refused_in_one_line(main: Callable[[Grid, Context], None]) -> Callable[[Grid, Context], None]:
    """A ServerApp main whose UserError ends the run failed with one line: printed to the run's log stream,
    and raised without the chain of our own frames (Flower still prints its own frames above it)."""
    @functools.wraps(main)
    def refusing(grid: Grid, context: Context) -> None:
        try:
            main(grid, context)
        except UserError as err:
            print(f"fl-medlego: the run was refused: {err}", flush=True)
            raise RunRefused(str(err)) from None
    return refusing


@app.main()
@refused_in_one_line
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, context)
