"""Mean normalized ACC against the number of specialists N, for every strategy (`fl-medlego scaling`).

Two ways to vary N, chosen by the scenario's sites:
- several modalities (cross_domain): every subset of N of the declared sites (at most `max_subsets` of
  them per N, drawn by seed when there are more), each site's specialist trained once and shared by
  every subset that holds it;
- one modality split across sites (in_domain, `pneumonia:4`): the modality split into N sites for each N,
  each split with its own specialists (a site's shard depends on N).
Each (N, subset) is a comparison of its own (resumable, in OUT/N<n>-<sites>/); the summary averages a
strategy's normalized ACC over the subsets of one N per seed, then gives mean and std over seeds.
Writes OUT/scaling.json, scaling.csv and scaling.png.
"""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

import numpy as np

from ..config import parse_run_config
from ..errors import ConfigError
from ..files import atomic_path, write_json_atomic
from .run import Comparison
from .table import normalized_by_seed, reference_rows


def subsets_for(run_config: dict, sizes: list[int], max_subsets: int, seed: int = 0) -> dict[int, list[str]]:
    """N -> the `sites` specs of the comparisons for that N."""
    cfg = parse_run_config(run_config)
    flags = {s.flag for s in cfg.sites}
    if len(flags) == 1:  # one modality split across sites: split it N ways
        modality = cfg.sites[0].flag.removesuffix("mnist")
        return {n: [f"{modality}:{n}"] for n in sizes}
    names = [s.name for s in cfg.sites]
    if any(s.count > 1 for s in cfg.sites):
        raise ConfigError("scaling over subsets needs one site per modality (or a single modality split N ways); "
                         f"got sites {names}")
    out = {}
    for n in sizes:
        if not 1 <= n <= len(names):
            raise ConfigError(f"N = {n}: the scenario declares {len(names)} sites")
        combos = [",".join(c) for c in itertools.combinations(names, n)]
        out[n] = combos if len(combos) <= max_subsets else random.Random(seed).sample(combos, max_subsets)
    return out


def run_scaling(run_config: dict, strategies: list[str], seeds: list[int], sizes: list[int], out_dir: Path,
                cache_dir: Path, max_subsets: int = 6, progress: bool = False) -> dict:
    out_dir = Path(out_dir)
    plan = subsets_for(run_config, sizes, max_subsets)
    split = len({s.flag for s in parse_run_config(run_config).sites}) == 1
    full = None if split else str(run_config["sites"])
    results = {}
    for n, subsets in plan.items():
        for sites in subsets:
            folder = out_dir / f"N{n}-{sites.replace(',', '+').replace(':', '-')}"
            comparison = Comparison({**run_config, "sites": sites}, strategies, seeds, folder, cache_dir,
                                    progress=progress, specialists_of=full)
            results.setdefault(n, {})[sites] = comparison.run()
    summary = summarize_scaling(results)
    _write(summary, out_dir)
    return summary


def summarize_scaling(results: dict[int, dict[str, dict]]) -> dict:
    """strategy -> N -> {mean, std, subsets, seeds} of the normalized ACC (subsets averaged per seed first)."""
    table: dict[str, dict[int, dict]] = {}
    for n, by_subset in sorted(results.items()):
        rows = {row for r in by_subset.values() for row in r["rows"] if row not in reference_rows()}
        for row in sorted(rows):
            per_seed: dict[str, list[float]] = {}
            for r in by_subset.values():
                for seed, value in normalized_by_seed(r, row).items():
                    per_seed.setdefault(seed, []).append(value)
            values = [float(np.mean(v)) for v in per_seed.values()]
            if values:
                table.setdefault(row, {})[n] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                                "subsets": len(by_subset), "seeds": len(values)}
    return table


def _write(summary: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "scaling.json", summary)
    with atomic_path(out_dir / "scaling.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["strategy", "N", "mean_normalized_acc", "std_over_seeds", "subsets", "seeds"])
        for row, by_n in summary.items():
            for n, cell in by_n.items():
                writer.writerow([row, n, cell["mean"], cell["std"], cell["subsets"], cell["seeds"]])
    plot(summary, out_dir / "scaling.png")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, by_n in sorted(summary.items()):
        ns = sorted(by_n, key=int)
        ax.errorbar([int(n) for n in ns], [by_n[n]["mean"] for n in ns], yerr=[by_n[n]["std"] for n in ns],
                    marker="o", capsize=2, label=row, linewidth=2.5 if row == "medlego" else 1.2)
    ax.set_xticks(sorted({int(n) for by_n in summary.values() for n in by_n}))  # N is a count: no 2.25 ticks
    ax.set_xlabel("number of specialists N")
    ax.set_ylabel("mean normalized ACC (merged / specialist)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130)
    plt.close(fig)
