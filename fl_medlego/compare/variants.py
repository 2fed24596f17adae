"""`fl-medlego variants`: comparisons run with different settings, set side by side, paired by seed.

    fl-medlego variants today=cm_both image=cm_image anchors=cm_image_anchors --baseline today -o variants/

Each folder is a `fl-medlego compare` of the same sites and seeds whose settings differ (a design choice,
e.g. `cross-modal.towers`). For every row the folders share (a merge, one-shot or after R rounds) and each
metric, the table gives the mean over sites and seeds, and each variant's difference to the baseline's
same row, paired by seed (mean over sites per seed, then a 95 % Student interval over the seeds and the
paired t-test's p): a variant wins only where the interval excludes 0. Writes variants.md and variants.csv.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..config import with_new_defaults
from ..errors import UserError
from ..files import atomic_path, write_text_atomic
from .table import format_paired, paired_test

METRICS = {"modality-share": "right modality", "union-acc": "union ACC", "acc": "own-prompt ACC", "auc": "AUC"}
PAIRED_COLUMNS = ("modality-share", "union-acc", "acc")  # the paired differences variants.md shows (the csv: all)


def _columns(metrics: list[str] | None) -> tuple[dict[str, str], tuple[str, ...]]:
    """The metrics to show (name -> label) and those with a paired column: the defaults, or the metrics named
    (each shown under its own name, every one paired)."""
    if not metrics:
        return METRICS, PAIRED_COLUMNS
    return {m: METRICS.get(m, m) for m in metrics}, tuple(metrics)


def _load(folder: Path) -> dict:
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise UserError(f"{folder} holds no results.json: name folders written by `fl-medlego compare -o`")
    return json.loads(path.read_text())


def _differing(settings: list[dict]) -> list[str]:
    settings = [with_new_defaults(s) for s in settings]
    keys = set().union(*settings) - {"seed"}
    return sorted(k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1)


def site_means(results: dict, row: str, metric: str) -> dict[str, float]:
    """seed -> the metric's mean over the row's sites (seeds where a site lacks it are left out)."""
    out = {}
    for seed, entry in results["rows"].get(row, {}).items():
        values = [site.get(metric) for site in entry.get("test", {}).values()]
        if values and all(v is not None for v in values):
            out[seed] = float(np.mean(values))
    return out


def variant_rows(variants: dict[str, dict], baseline: str, metrics=METRICS) -> list[dict]:
    """One record per (row, variant): each metric's mean over sites and seeds and its paired difference to the
    baseline's same row."""
    shared = [row for row in variants[baseline]["rows"] if all(row in v["rows"] for v in variants.values())]
    records = []
    for row in shared:
        for name, results in variants.items():
            record = {"row": row, "variant": name}
            for metric in metrics:
                mine = site_means(results, row, metric)
                record[metric] = float(np.mean(list(mine.values()))) if mine else None
                record[f"{metric} seeds"] = len(mine)
                if name != baseline:
                    record[f"{metric} vs {baseline}"] = paired_test(mine, site_means(variants[baseline], row, metric))
            records.append(record)
    return records


def metric_pairs(variants: dict[str, dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Two metrics of the same runs against each other (e.g. two-stage routing against the flat union): for
    each variant, row and pair (a, b), both means over sites and seeds and a - b paired by seed."""
    records = []
    for name, results in variants.items():
        for row in results["rows"]:
            for a, b in pairs:
                mine, theirs = site_means(results, row, a), site_means(results, row, b)
                seeds = sorted(set(mine) & set(theirs))  # both means over the seeds the difference pairs
                records.append({"row": row, "variant": name, "a": a, "b": b, "seeds": len(seeds),
                                "mean a": float(np.mean([mine[s] for s in seeds])) if seeds else None,
                                "mean b": float(np.mean([theirs[s] for s in seeds])) if seeds else None,
                                "a - b": paired_test(mine, theirs)})
    return records


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return format_paired(value) if isinstance(value, dict) else f"{value:.3f}"


def _mean_cell(value: float | None, seeds: int, most: int) -> str:
    """A mean, with its number of seeds where it has fewer than the table's best-measured rows."""
    return _cell(value) + (f" ({seeds} seed{'s' if seeds > 1 else ''})" if value is not None and seeds < most else "")


def render_variants(folders: dict[str, Path], baseline: str, out_dir: Path,
                    metrics: list[str] | None = None, pairs: list[tuple[str, str]] = ()) -> list[Path]:
    """metrics: the result keys to compare (default: right modality, union ACC, own-prompt ACC and AUC);
    pairs: (a, b) metrics set against each other within each variant's runs (a second table)."""
    if baseline not in folders:
        raise UserError(f"--baseline {baseline!r} is none of the variants ({', '.join(folders)})")
    variants = {name: _load(folder) for name, folder in folders.items()}
    shown, paired_columns = _columns(metrics)
    named = {"--metrics": list(metrics or ()), "--pairs": [m for pair in pairs for m in pair]}
    known = set()
    if any(named.values()):  # only a metric the user named needs looking for
        known = {m for v in variants.values() for row in v["rows"].values() for entry in row.values()
                 for site in entry.get("test", {}).values() for m in site}
    for flag, names in named.items():
        unknown = [m for m in names if m not in known]
        if unknown:
            raise UserError(f"{flag} {', '.join(unknown)}: no comparison holds it; their rows hold "
                            f"{', '.join(sorted(known))}")
    sites = {name: tuple(v["sites"]) for name, v in variants.items()}
    if len(set(sites.values())) > 1:
        raise UserError(f"the comparisons score different sites: {sites}")
    records = variant_rows(variants, baseline, shown)
    differing = _differing([v["settings"] for v in variants.values()])
    lines = [f"Variants of {', '.join(variants[baseline]['sites'])}; settings that differ: "
             f"{', '.join(differing) or 'none'}.", ""]
    for name, results in variants.items():
        measured = sorted({int(seed) for row in results["rows"].values() for seed in row})
        settings = with_new_defaults(results["settings"])
        lines.append(f"- `{name}`: " + ", ".join(f"{k}={settings.get(k)}" for k in differing)
                     + f" (rows measured on seeds {measured}; each row's seeds are in variants.csv)")
    header = ["row", "variant", *shown.values(), *(f"{shown[m]} vs {baseline}" for m in paired_columns)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    most = max((r[f"{m} seeds"] for r in records for m in shown), default=0)
    for r in records:
        cells = [r["row"], r["variant"], *(_mean_cell(r[m], r[f"{m} seeds"], most) for m in shown),
                 *(_cell(r.get(f"{m} vs {baseline}")) if r["variant"] != baseline else "" for m in paired_columns)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Means over the sites and seeds (a mean over fewer seeds than the others says how many). "
              f"`vs {baseline}`: the variant's mean over sites minus the "
              f"baseline's, paired by seed, 95 % interval and paired t-test p (* below 0.05)."]
    if pairs:
        lines += ["", "Metrics against each other within each variant's runs (a - b, paired by seed; both means over "
                  "the seeds where every site has both; n/a: no such seed):", "",
                  "| row | variant | a | b | mean a | mean b | a - b |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['row']} | {r['variant']} | {r['a']} | {r['b']} | {_cell(r['mean a'])} | {_cell(r['mean b'])} "
                  f"| {_cell(r['a - b'])} |" for r in metric_pairs(variants, list(pairs))]
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "variants.md"
    write_text_atomic(markdown, "\n".join(lines) + "\n")
    table = out_dir / "variants.csv"
    with atomic_path(table) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "variant", *(m for m in shown), *(f"{m} seeds" for m in shown),
                         *(f"{m} vs {baseline} {k}" for m in shown for k in ("mean", "low", "high", "p"))])
        for r in records:
            paired = [(r.get(f"{m} vs {baseline}") or {}).get(k, "") for m in shown
                      for k in ("mean", "low", "high", "p")]
            writer.writerow([r["row"], r["variant"], *(r[m] for m in shown), *(r[f"{m} seeds"] for m in shown),
                             *paired])
    return [markdown, table]
