"""`fl-medlego compare`: every strategy applied to the same specialists, tuned on validation, scored on test.

For each seed: train (or load from the cache) one SVD-LoRA specialist per site, merge them with each
selected strategy (options chosen by the mean validation ACC over the sites, never on test),
evaluate the merged adapter on every site's test split with that site's own head, and add the two
non-adapter rows: averaged fully fine-tuned models (`vit_avg`) and one multi-task model (`multitask`).
Results accumulate in results.json after every row, so an interrupted comparison resumes.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

from ..config import parse_run_config, settings_table
from ..data import parse_sites
from ..full_finetune import FULL_WEIGHT_STRATEGY, MultiTaskModel, average_backbones, train_full_site, train_multitask
from ..lora import load_adapter, save_adapter
from ..merging import get_merge, list_merges, merge_adapters
from ..models import SiteModel, create_backbone, preset_image_size
from ..site import evaluate_site, load_site_data, train_site
from ..train import evaluate
from .cache import SpecialistCache
from .table import render_comparison

log = logging.getLogger(__name__)

SPECIALISTS = "specialists (SVD-LoRA)"
FULL_SPECIALISTS = "specialists (full fine-tune)"
NON_ADAPTER = (FULL_WEIGHT_STRATEGY, "multitask")


def all_strategies() -> list[str]:
    return list_merges() + list(NON_ADAPTER)


def option_grid(method: str) -> list[dict]:
    space = getattr(get_merge(method).options_type, "search_space", {})
    return [dict(zip(space, values)) for values in itertools.product(*space.values())] or [{}]


class Comparison:
    def __init__(self, run_config: dict, strategies: list[str], seeds: list[int], out_dir: Path, cache_dir: Path,
                 progress: bool = False) -> None:
        unknown = sorted(set(strategies) - set(all_strategies()))
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; known: {', '.join(all_strategies())}")
        self.run_config, self.strategies, self.seeds = run_config, strategies, seeds
        self.out_dir, self.cache_dir, self.progress = Path(out_dir), Path(cache_dir), progress
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "results.json"
        cfg = parse_run_config(run_config)
        self.results = json.loads(self.path.read_text()) if self.path.is_file() else {
            "settings": settings_table(cfg), "sites": [s.name for s in parse_sites(cfg.sites)], "rows": {}}
        self.results["seeds"] = sorted(set(self.results.get("seeds", [])) | set(seeds))

    def _done(self, row: str, seed: int) -> bool:
        return str(seed) in self.results["rows"].get(row, {})

    def _record(self, row: str, seed: int, test: dict, **extra) -> None:
        self.results["rows"].setdefault(row, {})[str(seed)] = {"test": test, **extra}
        self.path.write_text(json.dumps(self.results, indent=2, default=str))

    def run(self) -> dict:
        started = time.time()
        for seed in self.seeds:
            cfg = parse_run_config({**self.run_config, "seed": seed})
            cache = SpecialistCache(self.cache_dir, cfg)
            sites = {s.name: load_site_data(cfg, s.name) for s in parse_sites(cfg.sites)}
            specialists = {name: self._svd_specialist(cfg, cache, data) for name, data in sites.items()}
            if not self._done(SPECIALISTS, seed):
                self._record(SPECIALISTS, seed, {s: m for s, (_, _, m) in specialists.items()})
            for strategy in self.strategies:
                if self._done(strategy, seed):
                    continue
                log.info("seed %d: %s", seed, strategy)
                t0 = time.time()
                if strategy == FULL_WEIGHT_STRATEGY:
                    self._vit_avg(cfg, cache, sites, seed)
                elif strategy == "multitask":
                    self._multitask(cfg, cache, sites, seed)
                else:
                    self._merge_row(cfg, sites, specialists, strategy, seed)
                self.results["rows"][strategy][str(seed)]["seconds"] = round(time.time() - t0, 1)
        self.results["wall_time_s"] = round(self.results.get("wall_time_s", 0) + time.time() - started, 1)
        self.path.write_text(json.dumps(self.results, indent=2, default=str))
        render_comparison(self.results, self.out_dir)
        return self.results

    def _svd_specialist(self, cfg, cache: SpecialistCache, data):
        entry = cache.entry(data.site.name, "svd_lora")
        if not cache.complete(entry):
            adapter, state, _ = train_site(cfg, data, None, None, progress=self.progress)
            test = evaluate_site(cfg, data, adapter, state.head)
            cache.write(entry, {"head": state.head}, test, extra=lambda tmp: save_adapter(adapter, tmp / "adapter"))
        return load_adapter(entry / "adapter"), cache.read(entry, "head"), cache.metrics(entry)

    def _merge_row(self, cfg, sites, specialists, strategy: str, seed: int) -> None:
        method = get_merge(strategy)
        fields = list(method.options_type.__dataclass_fields__)
        fixed = cfg.merge.options_for(fields)
        adapters = [specialists[s][0] for s in sites]
        best = None
        try:
            for options in option_grid(strategy):
                merged = merge_adapters(adapters, strategy, **{**fixed, **options})
                val = [evaluate_site(cfg, d, merged, specialists[s][1], "val")["acc"] for s, d in sites.items()]
                score = sum(val) / len(val)
                if best is None or score > best[0]:
                    best = (score, merged.metadata["merge"]["options"], merged)
        except ValueError as err:  # e.g. a method that needs equal ranks: the row says why it is empty
            log.warning("seed %d: %s cannot merge these specialists: %s", seed, strategy, err)
            self._record(strategy, seed, {}, error=str(err))
            return
        score, options, merged = best
        test = {s: evaluate_site(cfg, d, merged, specialists[s][1]) for s, d in sites.items()}
        ranks = sorted({f.rank for f in merged.factors.values()})
        self._record(strategy, seed, test, options=options, val_mean_acc=score, merged_ranks=ranks)

    def _full_specialist(self, cfg, cache: SpecialistCache, data):
        entry = cache.entry(data.site.name, "full")
        if not cache.complete(entry):
            model = train_full_site(cfg, data, progress=self.progress)
            test = evaluate(model, data.test, data.task, preset_image_size(cfg.model_name))
            cache.write(entry, {"backbone": model.backbone.state_dict(), "head": model.head.state_dict()}, test)
        return cache.read(entry, "backbone"), cache.read(entry, "head"), cache.metrics(entry)

    def _vit_avg(self, cfg, cache, sites, seed: int) -> None:
        full = {s: self._full_specialist(cfg, cache, d) for s, d in sites.items()}
        if not self._done(FULL_SPECIALISTS, seed):
            self._record(FULL_SPECIALISTS, seed, {s: m for s, (_, _, m) in full.items()})
        soup = average_backbones([b for b, _, _ in full.values()])
        test = {}
        for s, d in sites.items():
            model = SiteModel(create_backbone(cfg.model_name, num_classes=0, seed=cfg.seed), d.num_classes)
            model.backbone.load_state_dict(soup)
            model.head.load_state_dict(full[s][1])
            test[s] = evaluate(model, d.test, d.task, preset_image_size(cfg.model_name))
        self._record(FULL_WEIGHT_STRATEGY, seed, test)

    def _multitask(self, cfg, cache, sites, seed: int) -> None:
        entry = cache.entry("multitask")
        if not cache.complete(entry):
            model = train_multitask(cfg, sites, progress=self.progress)
            cache.write(entry, {"model": model.state_dict()}, {"sites": list(sites)})
            state = model.state_dict()
        else:
            state = cache.read(entry, "model")
        model = MultiTaskModel(create_backbone(cfg.model_name, num_classes=0, seed=cfg.seed),
                               {s: d.num_classes for s, d in sites.items()})
        model.load_state_dict(state)
        size = preset_image_size(cfg.model_name)
        self._record("multitask", seed, {s: evaluate(model.site_model(s), d.test, d.task, size)
                                         for s, d in sites.items()})
