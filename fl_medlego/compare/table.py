"""The paper's Table 1 layout from a comparison's results.json: Markdown, CSV and a heatmap PNG.

Rows are strategies, columns each task's ACC and AUC and the mean normalized ACC (merged ACC /
SVD-LoRA specialist ACC of the same seed and site, averaged over sites). With several seeds every
cell is mean ± std over seeds. Best is bold and second underlined among the assembled models
(merges and ViT averaging); the specialist and multi-task rows are references, not ranked.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..files import atomic_path, write_text_atomic
from ..kinds import ReportColumns, SiteKind, ceiling_kind, get_kind, list_kinds
from ..metrics import MAJORITY_MARGIN, at_majority_rate, normalized_accuracy
from ..wire import MERGED_MAX_RANK

MULTITASK = "multitask"

NORMALIZED_BY = ceiling_kind().specialists_row()  # normalized ACC: merged / SVD-LoRA specialist ACC


def _kinds() -> list[SiteKind]:
    return [get_kind(name) for name in list_kinds()]  # every registered kind, a late-registered one too


def specialists_row(kind: SiteKind) -> str:
    """The row of a kind's specialists (the site's own model, not an assembled one)."""
    return kind.specialists_row()


def reference_rows() -> tuple[str, ...]:
    """Rows that are references, not ranked: each kind's specialists, the multi-task model and the rows the kinds
    add (a model before any training)."""
    kinds = _kinds()
    return (*(k.specialists_row() for k in kinds), MULTITASK, *(row for k in kinds for row in k.untrained_rows))


NORMALIZED = "mean norm. ACC"


def _stats(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0


def normalized_by_seed(results: dict, row: str) -> dict[str, float]:
    """seed -> the row's mean normalized ACC in that seed (seeds where the row and the reference ran).
    A site whose specialist scored 0 ACC (a tiny test split, e.g. one modality split 16 ways) has no
    ratio: it is left out of that seed's mean, and `unnormalizable` names it for the table."""
    sites, reference = results["sites"], results["rows"].get(NORMALIZED_BY, {})
    out = {}
    for seed, r in results["rows"].get(row, {}).items():
        ref = reference.get(seed, {}).get("test")
        if r.get("test") and ref:
            ratios = [normalized_accuracy(r["test"][s]["acc"], ref[s]["acc"]) for s in sites]
            ratios = [x for x in ratios if not math.isnan(x)]
            if ratios:
                out[seed] = float(np.mean(ratios))
    return out


def unnormalizable(results: dict) -> list[tuple[str, str]]:
    """(seed, site) pairs left out of the normalized ACC because the specialist's test ACC is 0."""
    reference = results["rows"].get(NORMALIZED_BY, {})
    return [(seed, s) for seed, r in sorted(reference.items()) for s in results["sites"]
            if r.get("test") and r["test"][s]["acc"] <= 0]


MAJORITY_MARK = "†"


def at_majority(results: dict) -> dict[str, list[str]]:
    """site -> the seeds in which its SVD-LoRA specialist's test ACC is at the split's majority-class rate."""
    found: dict[str, list[str]] = {}
    for seed, r in sorted(results["rows"].get(NORMALIZED_BY, {}).items()):
        for site in results["sites"]:
            if r.get("test") and at_majority_rate(r["test"][site]):
                found.setdefault(site, []).append(seed)
    return found


def summarize(results: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """row -> column -> (mean, std) over seeds; columns are '<site> ACC', '<site> AUC' and NORMALIZED."""
    sites, rows = results["sites"], results["rows"]
    table = {}
    for row, by_seed in rows.items():
        runs = [r for r in by_seed.values() if r.get("test")]
        if not runs:
            continue
        cells = {}
        for site in sites:
            cells[f"{site} ACC"] = _stats([r["test"][site]["acc"] for r in runs])
            cells[f"{site} AUC"] = _stats([r["test"][site]["auc"] for r in runs])
        cells[NORMALIZED] = _stats(list(normalized_by_seed(results, row).values()))
        table[row] = cells
    return table


PAIRED_BASELINE = "medlego"
SIGNIFICANCE = 0.05


def paired_difference(results: dict, row: str, baseline: str = PAIRED_BASELINE) -> dict | None:
    """The row's mean normalized ACC minus the baseline's, paired by seed: see `paired_test`."""
    return paired_test(normalized_by_seed(results, row), normalized_by_seed(results, baseline))


def paired_test(mine: dict[str, float], theirs: dict[str, float]) -> dict | None:
    """mine - theirs over the keys (seeds) both hold: mean, 95 % confidence interval (Student t over
    the seeds) and the paired t-test's two-sided p. None below two shared seeds."""
    from scipy import stats

    seeds = sorted(set(mine) & set(theirs))
    if len(seeds) < 2:
        return None
    diff = np.array([mine[s] - theirs[s] for s in seeds])
    mean, sem = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
    half = float(stats.t.ppf(0.975, len(diff) - 1) * sem)
    p = float(stats.ttest_rel([mine[s] for s in seeds], [theirs[s] for s in seeds]).pvalue) if sem > 0 else (
        0.0 if mean != 0 else 1.0)
    return {"mean": mean, "low": mean - half, "high": mean + half, "p": p, "seeds": len(seeds)}


def format_paired(d: dict, scale: float = 1.0, digits: int = 3) -> str:
    """A `paired_test` result as "mean [low, high], p=..", `*` below SIGNIFICANCE; scale 100 for points."""
    mean, low, high = (d[k] * scale for k in ("mean", "low", "high"))
    mark = " *" if d["p"] < SIGNIFICANCE else ""
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}], p={d['p']:.2g}{mark}"


def _paired_cell(results: dict, row: str) -> str:
    if row == PAIRED_BASELINE or row in reference_rows() or PAIRED_BASELINE not in results["rows"]:
        return ""
    d = paired_difference(results, row)
    return "n/a" if d is None else format_paired(d)


def columns(results: dict) -> list[str]:
    return [f"{s} {m}" for s in results["sites"] for m in ("ACC", "AUC")] + [NORMALIZED]


PRECISION = 3  # decimals a cell prints: values equal at it are a tie


def _ranks(table: dict, column: str) -> dict[str, int]:
    """1 for the best, 2 for the second among the ranked rows, compared as printed: values equal at PRECISION
    decimals share a place, and a value equal to the best is never second."""
    references = reference_rows()
    printed = {r: round(c[column][0], PRECISION) for r, c in table.items()
               if r not in references and not math.isnan(c[column][0])}
    scores = sorted(set(printed.values()), reverse=True)
    return {r: scores.index(v) + 1 for r, v in printed.items() if scores.index(v) < 2}


def _cell(mean: float, std: float, seeds: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if seeds > 1 else f"{mean:.3f}"


def to_markdown(results: dict) -> str:
    table, cols, seeds = summarize(results), columns(results), len(results["seeds"])
    ranks = {c: _ranks(table, c) for c in cols}
    paired = seeds > 1 and PAIRED_BASELINE in results["rows"]
    extra = [f"vs {PAIRED_BASELINE}"] if paired else []
    headers = [f"{c} {MAJORITY_MARK}" if c == NORMALIZED and at_majority(results) else c for c in cols]
    lines = ["| strategy | " + " | ".join(headers + extra) + " |", "|---|" + "---|" * (len(cols) + len(extra))]
    for row, cells in table.items():
        out = []
        for c in cols:
            text = _cell(*cells[c], seeds)
            place = ranks[c].get(row)
            out.append(f"**{text}**" if place == 1 else f"<u>{text}</u>" if place == 2 else text)
        if paired:
            out.append(_paired_cell(results, row))
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    errors = [f"- `{row}` (seed {seed}): {r['error']}" for row, by_seed in results["rows"].items()
              for seed, r in by_seed.items() if r.get("error")]
    options = [f"- `{row}`: " + "; ".join(f"seed {seed}: {r.get('options')}" for seed, r in by_seed.items())
               for row, by_seed in results["rows"].items() if any(r.get("options") for r in by_seed.values())]
    text = [f"# Comparison: {', '.join(results['sites'])} ({seeds} seed{'s' * (seeds > 1)})", "",
            "Test ACC / AUC per task, each merged model evaluated with each site's own head. "
            f"`{NORMALIZED}` = mean over tasks of merged ACC / SVD-LoRA specialist ACC. "
            "Best **bold**, second <u>underlined</u> among the assembled models; specialists and the "
            "(centralised) multi-task model are references." + (" Cells: mean ± std over seeds." if seeds > 1 else "")
            + (f" `vs {PAIRED_BASELINE}`: the row's mean normalized ACC minus {PAIRED_BASELINE}'s, paired by seed, "
               f"with its 95 % confidence interval and the paired t-test's p (* below {SIGNIFICANCE})."
               if paired else ""),
            "", *lines, "", "Options chosen on the validation splits:", *options]
    if errors:
        text += ["", "Strategies that could not merge these specialists:", *errors]
    trivial = at_majority(results)
    if trivial:
        text += ["", f"{MAJORITY_MARK} Specialists at their test split's majority-class rate (ACC within "
                 f"{100 * MAJORITY_MARGIN:g} points of the share of the most frequent class: they learned nothing a "
                 f"constant guess does not, and `{NORMALIZED}` against them flatters every row): "
                 + ", ".join(f"{site} (seed{'s' * (len(where) > 1)} {', '.join(where)})"
                             for site, where in trivial.items())]
    left_out = unnormalizable(results)
    if left_out:
        text += ["", f"Left out of `{NORMALIZED}` (the specialist's test ACC is 0, so no ratio exists): "
                 + ", ".join(f"{site} (seed {seed})" for seed, site in left_out)]
    for section in kind_sections():
        text += section_markdown(results, section)
    text += ["", f"Wall time: {results.get('wall_time_s', 'n/a')} s"]
    return "\n".join(text) + "\n"


def kind_sections() -> list[ReportColumns]:
    return [kind.report for kind in _kinds() if kind.report is not None]


def section_markdown(results: dict, section: ReportColumns) -> list[str]:
    """A kind's own columns, means over the sites (± std over seeds), for the rows that report them."""
    rows = {row: [r["test"] for r in by_seed.values() if r.get("test")] for row, by_seed in results["rows"].items()}
    first = next(iter(section.columns))
    rows = {row: runs for row, runs in rows.items() if runs and all(first in m for m in runs[0].values())}
    if not rows:
        return []
    seeds = len(results["seeds"])
    columns = {**section.compare_first, **section.columns}
    per_site = [(metric, f"{s} {label}", s) for metric, label in section.per_site for s in results["sites"]]
    lines = ["| strategy | " + " | ".join([*columns.values(), *(label for _, label, _ in per_site)]) + " |",
             "|---|" + "---|" * (len(columns) + len(per_site))]
    for row, runs in rows.items():
        cells = []
        for key in columns:
            per_seed = [np.nanmean([m.get(key, math.nan) for m in run.values()]) for run in runs]
            cells.append(_cell(*_stats(per_seed), seeds))
        cells += [_cell(*_stats([run[s].get(metric, math.nan) for run in runs]), seeds) for metric, _, s in per_site]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return ["", f"## {section.title}", "", section.compare_text, "", *lines]


def rich_table(results: dict):
    """The comparison for a terminal: strategy names are never cut (the column does not wrap)."""
    from rich.table import Table

    table, cols, seeds = summarize(results), columns(results), len(results["seeds"])
    ranks = {c: _ranks(table, c) for c in cols}
    out = Table(title=f"test ACC / AUC: {', '.join(results['sites'])}")
    out.add_column("strategy", no_wrap=True)
    for c in cols:
        out.add_column(c, justify="right", no_wrap=True)
    for row, cells in table.items():
        texts = []
        for c in cols:
            place = ranks[c].get(row)
            text = _cell(*cells[c], seeds)
            texts.append(f"[bold]{text}[/bold]" if place == 1 else f"[underline]{text}[/underline]" if place == 2
                         else text)
        out.add_row(row, *texts)
    return out


def print_whole(console, table) -> None:
    """Print a rich table as wide as it needs: a narrow terminal scrolls instead of cutting names."""
    from rich.console import Console

    natural = Console(width=10_000).measure(table).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(table)
    finally:
        console.width = width


def to_csv(results: dict, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        extra = [key for section in kind_sections() for key in section.columns]
        writer.writerow(["strategy", "seed", "site", "acc", "auc", "f1", "loss", *extra, "options"])
        for row, by_seed in results["rows"].items():
            for seed, r in by_seed.items():
                for site, m in r.get("test", {}).items():
                    writer.writerow([row, seed, site, m["acc"], m["auc"], m["f1"], m["loss"],
                                     *(m.get(k, "") for k in extra), r.get("options", "")])


def energy_sweep(results: dict) -> list[dict]:
    """The fixed-v Med-LEGO rows (`compare --energy-sweep`): v, mean normalized ACC (± std over seeds) and
    the merged rank kept (max over matrices, mean over seeds), by increasing v."""
    points = []
    for row, by_seed in results["rows"].items():
        runs = [r for r in by_seed.values() if r.get("test") and "energy" in (r.get("options") or {})]
        if not row.startswith("medlego (v=") or not runs:
            continue
        per_seed = normalized_by_seed(results, row)
        mean, std = _stats(list(per_seed.values()))
        points.append({"energy": runs[0]["options"]["energy"], "normalized_acc": mean, "std": std,
                       "by_seed": per_seed,
                       "merged_rank": float(np.mean([r.get(MERGED_MAX_RANK, math.nan) for r in runs]))})
    return sorted(points, key=lambda p: p["energy"])


def render_comparison(results: dict, out_dir: Path) -> list[Path]:
    from .figures import energy_plot, heatmap  # they read this module's tables

    out_dir = Path(out_dir)
    paths = [out_dir / "table.md", out_dir / "table.csv", out_dir / "table.png"]
    write_text_atomic(paths[0], to_markdown(results))
    to_csv(results, paths[1])
    heatmap(results, paths[2])
    points = energy_sweep(results)
    if points:
        paths.append(out_dir / "energy_sweep.png")
        energy_plot(points, paths[-1])
    return paths
