"""`fl-medlego compare`: every strategy applied to the same specialists, tuned on validation, scored on test.

For each seed and each site kind a strategy needs: train (or load from the cache) one specialist per
site; combine them with each selected strategy of that kind (options chosen by the mean over the sites
of their validation ACC, or of what the kind's sites score instead, KindSite.tuning_score; never on test)
and evaluate the result on every site's test split with that site's own head. Adapter merges and
full-weight averaging (`vit_avg`) go through the same path; the centralised multi-task model
(`multitask`) is a reference row of its own. Results accumulate in results.json after every row, so an
interrupted comparison resumes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ..config import RunConfig, parse_run_config, part_weights_text, settings_table, with_new_defaults
from ..data import SiteData, parse_sites
from ..errors import ConfigError
from ..files import write_json_atomic
from ..kinds import SiteKind, all_strategies, ceiling_kind, kind_for_strategy
from ..metrics import majority_rate
from ..models import create_backbone
from ..multitask import MultiTaskModel, train_multitask
from ..privacy.coordinator import EPSILON_SPENT, PRIVACY_DELTA
from ..privacy.site import train_from_base, trains_privately
from ..site import load_site_data
from ..train import evaluate
from ..wire import MAJORITY_RATE
from .cache import SpecialistCache
from .table import MULTITASK, render_comparison

log = logging.getLogger(__name__)


def federated_row(strategy: str, rounds: int) -> str:
    """The row of a strategy run for several rounds (sites continue from the merge); one round is the
    one-shot merge of the specialists (the paper's setting) and keeps the strategy's own name."""
    return strategy if rounds == 1 else f"{strategy} ({rounds} rounds)"


def sweep_row(energy: float) -> str:
    """A Med-LEGO row at a fixed threshold v (not tuned, no rank cap): what v keeps, and what it costs."""
    return f"medlego (v={energy:g}, fixed)"


def compared_strategies(run_config: dict | None = None) -> list[str]:
    """What `compare` runs by default: every strategy and the multi-task reference, or, when the scenario
    names a kind that must be chosen explicitly (cross-modal), that kind's strategies."""
    own = parse_run_config(run_config).kind.comparison_strategies() if run_config is not None else None
    return own if own is not None else all_strategies() + [MULTITASK]


def _options_as_run_config(run_config: dict, options: dict) -> dict:
    """The run config keys that make a run's merge use `options` (as the one-shot tuning chose them)."""
    shared = {"energy": "merge.energy", "max_rank": "merge.max-rank"}
    config = {shared[k]: (0 if v is None else v) for k, v in options.items() if k in shared}
    # None is no TOML value: such an option is left at its default (None for every option that may be None;
    # the round trip below refuses any other)
    others = {k: v for k, v in options.items() if k not in shared and v is not None}
    config["merge.options"] = " ".join(f"{k}={json.dumps(v)}" for k, v in others.items())
    chosen = parse_run_config({**run_config, **config}).merge.options if options else None
    if options and dataclasses.asdict(chosen) != options:
        raise ValueError(f"the options {options} do not survive the run config ({dataclasses.asdict(chosen)})")
    return config


def _trains_privately(strategy: str) -> bool:
    """Whether the privacy layer can wrap a strategy's row (the multi-task reference trains centrally, without it)."""
    return strategy != MULTITASK and trains_privately(kind_for_strategy(strategy))


def _test_metrics(cfg: RunConfig, sites: dict[str, SiteData], combined, heads: dict) -> dict[str, dict]:
    """Every site's test metrics of one combined update, each with that site's own head."""
    site = cfg.kind_site()
    return {s: site.evaluate(d, combined, heads[s]) for s, d in sites.items()}


class Comparison:
    def __init__(self, run_config: dict, strategies: list[str], seeds: list[int], out_dir: Path, cache_dir: Path,
                 progress: bool = False, rounds: tuple[int, ...] = (1,), energies: tuple[float, ...] = (),
                 specialists_of: str | None = None, federate: Callable | None = None) -> None:
        """federate(run_config, state_dir) -> a finished federation with its run_dir: how rows of several
        rounds run (fl_medlego.cli.local_run.run_local_federation; compare's library code imports no Flower)."""
        cfg = parse_run_config(run_config)
        if not rounds or min(rounds) < 1:
            raise ConfigError(f"rounds must be positive numbers of rounds, e.g. --rounds 1,3; got {list(rounds)}")
        known = compared_strategies(run_config)
        unknown = sorted(set(strategies) - set(known))
        if unknown:
            raise ConfigError(f"strategies {unknown} do not run on this scenario's sites (kind {cfg.kind.name!r}); "
                             f"known: {', '.join(known)}")
        if cfg.privacy.private:
            # A comparison is only private if every row is: the rest would train without DP-SGD, or fail midway.
            public = [s for s in strategies if not _trains_privately(s)]
            if public:
                raise ConfigError(f"privacy.mode={cfg.privacy.mode!r}: {public} cannot train with DP-SGD; "
                                 "leave them out of --strategies")
        # Merge parts that a strategy's kind refuses or whose prefixes name no matrix fail here, before any
        # specialist trains; so do a sweep's fixed rows given several weights per part.
        for strategy in strategies:
            if strategy != MULTITASK:
                parse_run_config({**run_config, "strategy": strategy})
        cfg.kind_server().check_merge(cfg.merge.with_part_weights(cfg.merge.part_weight_grid()[0]))
        if energies and len(cfg.merge.part_weight_grid()) > 1:
            raise ConfigError("--energy-sweep's rows are fixed combinations: give merge.part-weights one weight per "
                              "part, or sweep without part weights")
        self.run_config, self.strategies, self.seeds = run_config, strategies, seeds
        self.rounds = sorted(set(rounds))
        # A subset of a larger comparison's sites (fl_medlego.compare.scaling) reuses that comparison's
        # specialists: the cache is keyed by the full site list. Only for sites of distinct modalities,
        # whose data and training do not depend on the other sites.
        self.specialists_of = specialists_of
        self.federate = federate
        if any(not 0 < v <= 1 for v in energies):
            raise ConfigError(f"--energy-sweep values are Med-LEGO thresholds v in (0, 1], got {list(energies)}")
        self.energies = sorted(set(energies))
        self.out_dir, self.cache_dir, self.progress = Path(out_dir), Path(cache_dir), progress
        self.path = self.out_dir / "results.json"
        settings = json.loads(json.dumps(settings_table(cfg), default=str))  # as results.json holds them
        if self.path.is_file():
            self.results = json.loads(self.path.read_text())
            # Finished rows are reused by name: rows of other settings would come back as this run's. The seed
            # is each row's own (--seeds adds seeds to a comparison).
            stored = with_new_defaults(self.results.get("settings", {}))
            differing = sorted(k for k in stored.keys() | settings.keys()
                               if k != "seed" and stored.get(k) != settings.get(k))
            if differing:
                raise ConfigError(f"{self.out_dir} holds a comparison with other settings (differing: "
                                  f"{', '.join(differing)}): use another -o folder, or the same settings to resume "
                                  "it or add seeds")
        else:
            self.results = {"settings": settings, "sites": cfg.site_names, "rows": {}}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.results["seeds"] = sorted(set(self.results.get("seeds", [])) | set(seeds))

    def _done(self, row: str, seed: int) -> bool:
        return str(seed) in self.results["rows"].get(row, {})

    def _record(self, row: str, seed: int, test: dict, **extra) -> None:
        self.results["rows"].setdefault(row, {})[str(seed)] = {"test": test, **extra}
        self._save()

    def _save(self) -> None:
        """Atomically: an interrupted write never loses the rows measured so far."""
        write_json_atomic(self.path, self.results, default=str)

    def _config(self, seed: int, strategy: str | None = None) -> RunConfig:
        overrides = {"seed": seed, **({"strategy": strategy} if strategy else {})}
        cfg = parse_run_config({**self.run_config, **overrides})
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=self.progress))

    def run(self) -> dict:
        started = time.time()
        # One step per (seed, strategy): rows measured before an interruption count as done at once.
        rows = [(s, r) for s in self.strategies for r in ([1] if s == MULTITASK else self.rounds)]
        names = [federated_row(s, r) for s, r in rows] + [sweep_row(v) for v in self.energies]
        bar = tqdm(total=len(self.seeds) * len(names), desc="compare", unit="row", disable=not self.progress,
                   initial=sum(self._done(name, seed) for seed in self.seeds for name in names))
        for seed in self.seeds:
            cfg = self._config(seed)
            sites = {name: load_site_data(cfg, name) for name in cfg.site_names}
            # The reference of the normalized ACC: trained whatever the strategies compared.
            self._specialists(cfg, ceiling_kind(), sites, seed)
            for row in cfg.kind.untrained_rows:  # where a kind whose untrained model classifies starts
                if not self._done(row, seed):
                    self._record(row, seed, {s: cfg.kind_site().evaluate(d, None, {}) for s, d in sites.items()})
            for strategy, rounds in rows:
                row = federated_row(strategy, rounds)
                if self._done(row, seed):
                    continue
                bar.set_postfix_str(f"seed {seed}: {row}")
                log.info("seed %d: %s", seed, row)
                t0 = time.time()
                if strategy == MULTITASK:
                    self._multitask(cfg, sites, seed)
                elif rounds == 1:
                    self._combined_row(self._config(seed, strategy), sites, seed)
                else:
                    self._federated_row(self._config(seed, strategy), sites, seed, rounds)
                self.results["rows"][row][str(seed)]["seconds"] = round(time.time() - t0, 1)
                bar.update(1)
            for energy in self.energies:
                if not self._done(sweep_row(energy), seed):
                    bar.set_postfix_str(f"seed {seed}: {sweep_row(energy)}")
                    self._fixed_row(self._config(seed, "medlego"), sites, seed, sweep_row(energy),
                                    {"energy": energy, "max_rank": None})
                    bar.update(1)
        bar.close()
        self.results["wall_time_s"] = round(self.results.get("wall_time_s", 0) + time.time() - started, 1)
        self._save()
        render_comparison(self.results, self.out_dir)
        return self.results

    def _specialists(self, cfg: RunConfig, kind: SiteKind, sites: dict[str, SiteData], seed: int) -> dict:
        """site -> (update, head) of each site's specialist of this kind, trained once and cached."""
        key = cfg if self.specialists_of is None else dataclasses.replace(cfg, sites=tuple(parse_sites(
            self.specialists_of)))
        cache = SpecialistCache(self.cache_dir, key)
        site, server = cfg.kind_site(kind.name), cfg.kind_server(kind.name)
        base = server.shared_base()[1]  # a replaced base refuses old entries
        found = {}
        for name, data in sites.items():
            entry = cache.entry(name, kind.name)
            if not cache.complete(entry):
                result = train_from_base(cfg.privacy, cfg.num_rounds, site, data)
                test = site.evaluate(data, result.update, result.state.head)
                spent = {k: v for k, v in result.metrics.items() if k in (EPSILON_SPENT, PRIVACY_DELTA)}
                cache.write(entry, {"head": result.state.head}, {"test": test, "base": result.base_fingerprint,
                                                                 **spent},
                            extra=lambda tmp, r=result: server.save(r.update, tmp, r.base_fingerprint))
            # The test split's majority-class rate, also for specialists cached before sites measured it.
            test = {MAJORITY_RATE: majority_rate(data.test.labels.numpy(), data.task), **cache.metrics(entry)["test"]}
            found[name] = (server.load(entry, base), cache.read(entry, "head"), test)
        if not self._done(kind.specialists_row(), seed):
            self._record(kind.specialists_row(), seed, {s: test for s, (_, _, test) in found.items()})
        return found

    def _combined_row(self, cfg: RunConfig, sites: dict[str, SiteData], seed: int) -> None:
        kind, strategy = cfg.kind, cfg.strategy
        site, server = cfg.kind_site(), cfg.kind_server()
        specialists = self._specialists(cfg, kind, sites, seed)
        updates = [specialists[s][0] for s in sites]
        best = None
        try:
            for values, part_weights in itertools.product(kind.option_grid(strategy), cfg.merge.part_weight_grid()):
                merge = cfg.merge.with_options(**values).with_part_weights(part_weights)
                combined = server.combine(updates, None, merge)
                val = [site.tuning_score(d, combined, specialists[s][1]) for s, d in sites.items()]
                score = sum(val) / len(val)
                if best is None or score > best[0]:
                    best = (score, merge, combined)
        except ValueError as err:  # e.g. a method that needs equal ranks: the row says why it is empty
            log.warning("seed %d: %s cannot combine these specialists: %s", seed, strategy, err)
            self._record(strategy, seed, {}, error=str(err))
            return
        score, merge, combined = best
        test = _test_metrics(cfg, sites, combined, {s: specialists[s][1] for s in sites})
        options = dataclasses.asdict(merge.options) if merge.options is not None else {}
        chosen_parts = {"part_weights": merge.parts.weights} if merge.part_weights else {}
        tuned_on = {f"val_mean_{site.tuning_metric.replace('-', '_')}": score}  # val_mean_acc, val_mean_union_acc
        self._record(strategy, seed, test, options=options, **tuned_on, **chosen_parts,
                     **server.describe(combined))

    def _fixed_row(self, cfg: RunConfig, sites: dict[str, SiteData], seed: int, row: str, options: dict) -> None:
        """One combination with the given options (no tuning): test metrics and the merged rank."""
        server = cfg.kind_server()
        specialists = self._specialists(cfg, cfg.kind, sites, seed)
        combined = server.combine([specialists[s][0] for s in sites], None, cfg.merge.with_options(**options))
        test = _test_metrics(cfg, sites, combined, {s: specialists[s][1] for s in sites})
        self._record(row, seed, test, options=options, **server.describe(combined))

    def _federated_row(self, cfg: RunConfig, sites: dict[str, SiteData], seed: int, rounds: int) -> None:
        """A real federation of `rounds` rounds, run as `flwr run` runs it (the ServerApp's strategy with its
        guard, weighting and quorum; the ClientApp's training and evaluation), in this process through
        `self.federate` (fl_medlego.cli.local_run), with the merge options chosen one-shot on validation.
        Round 1 trains each site's specialist from the base, as the cached ones were (same seed); under DP-SGD
        its noise is planned over `rounds` rounds, the cached specialists' over the scenario's num-rounds (which
        is therefore part of their cache key), so round 1 is then a different specialist."""
        strategy = cfg.strategy
        one_shot = self.results["rows"].get(strategy, {}).get(str(seed))
        if one_shot is None or one_shot.get("error"):
            self._combined_row(cfg, sites, seed)  # the options come from the one-shot tuning on validation
            one_shot = self.results["rows"][strategy][str(seed)]
        row = federated_row(strategy, rounds)
        if one_shot.get("error"):
            self._record(row, seed, {}, error=one_shot["error"])
            return
        if self.federate is None:
            raise ValueError("federated rows run a federation in this process: pass federate="
                             "fl_medlego.cli.local_run.run_local_federation")
        folder = self.out_dir / "federated" / f"{strategy}-{rounds}-rounds-seed-{seed}"
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted attempt: its row was never recorded
        run_config = {**self.run_config, "seed": seed, "strategy": strategy, "num-rounds": rounds,
                      "output-dir": str(folder / "runs")}
        run_config |= _options_as_run_config(run_config, one_shot.get("options", {}))
        if one_shot.get("part_weights"):  # the weights the one-shot tuning chose, one per part
            run_config["merge.part-weights"] = part_weights_text(one_shot["part_weights"])
        federation = self.federate(run_config, folder / "state")
        summary = json.loads((federation.run_dir / "summary.json").read_text())
        test = {site: {k: v for k, v in entry["merged"].items() if k != "round"}
                for site, entry in summary["sites"].items()}
        server = cfg.kind_server()
        combined = server.load(federation.strategy.results.round_dir(rounds), None)
        chosen_parts = {"part_weights": one_shot["part_weights"]} if one_shot.get("part_weights") else {}
        self._record(row, seed, test, options=one_shot.get("options", {}), rounds=rounds, **chosen_parts,
                     run_dir=str(federation.run_dir), **server.describe(combined))

    def _multitask(self, cfg: RunConfig, sites: dict[str, SiteData], seed: int) -> None:
        cache = SpecialistCache(self.cache_dir, cfg)
        entry = cache.entry(MULTITASK)
        if not cache.complete(entry):
            model = train_multitask(cfg, sites, progress=self.progress)
            cache.write(entry, {"model": model.state_dict()}, {"sites": list(sites)})
            state = model.state_dict()
        else:
            state = cache.read(entry, "model")
        model = MultiTaskModel(create_backbone(cfg.model_name, num_classes=0, seed=cfg.seed),
                               {s: d.num_classes for s, d in sites.items()})
        model.load_state_dict(state)
        self._record(MULTITASK, seed, {s: evaluate(model.site_model(s, cfg.image_size), d.test, d.task, cfg.image_size)
                                       for s, d in sites.items()})
