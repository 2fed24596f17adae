"""Summaries as tables: Markdown for files, rich for the console."""

from __future__ import annotations

import math

from rich.table import Table

from .kinds import ReportColumns, get_kind, list_kinds
from .wire import TEST_ACC, VAL_ACC


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_rows(summary: dict) -> list[list[str]]:
    rows = []
    for site, s in summary["sites"].items():
        own, mix = s["specialist"], s["merged"]
        rows.append([site, _fmt(own.get("acc")), _fmt(own.get("auc")), _fmt(own.get("f1")), _fmt(mix.get("acc")),
                     _fmt(mix.get("auc")), _fmt(mix.get("f1")), _fmt(s["normalized_acc"])])
    rows.append(["mean", "", "", "", "", "", "", _fmt(summary["mean_normalized_acc"])])
    return rows


HEADER = ["site", "specialist ACC", "specialist AUC", "specialist F1", "merged ACC", "merged AUC", "merged F1",
          "normalized ACC"]
def kind_sections() -> list[ReportColumns]:
    """The report sections the registered kinds declare (each shown where its metrics were reported)."""
    return [kind.report for kind in map(get_kind, list_kinds()) if kind.report is not None]


def section_rows(summary: dict, section: ReportColumns) -> list[list[str]]:
    """A kind's own metrics of the specialist and the merged model, per site (where the site reported them)."""
    rows = []
    for site, s in summary["sites"].items():
        for model in ("specialist", "merged"):
            metrics = s[model]
            if any(k in metrics for k in section.columns):
                rows.append([site, model, *(_fmt(metrics.get(k)) for k in section.columns)])
    return rows


def section_lines(summary: dict, section: ReportColumns) -> list[str]:
    rows = section_rows(summary, section)
    if not rows:
        return []
    header = ["site", "model", *section.columns.values()]
    return ["", *section.summary_text, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def summary_markdown(summary: dict) -> str:
    lines = [
        f"# Run summary: strategy `{summary.get('strategy')}`",
        "",
        "Test metrics per site: the site's own specialist adapter vs. the merged adapter (each with the",
        "site's own head, or for cross-modal sites its class prompts). Normalized ACC = merged ACC / specialist ACC.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(summary)]
    for section in kind_sections():
        lines += section_lines(summary, section)
    lines += privacy_lines(summary.get("privacy") or {})
    lines += ["", f"Wall time: {summary.get('wall_time_s')} s"]
    return "\n".join(lines) + "\n"


def privacy_lines(privacy: dict) -> list[str]:
    """The privacy section of summary.md: each DP-SGD site's (epsilon, delta) as it reported them."""
    if privacy.get("mode", "none") == "none":
        return ["", "Privacy: no differential privacy (privacy.mode = none): only what leaves a site is limited."]
    lines = ["", f"Privacy: {privacy['mode']}, budget epsilon {privacy['epsilon_budget']:g} per site for the whole "
             f"run, accountant {privacy['accountant']}, clipping bound {privacy['max_grad_norm']:g}. Spent, as each "
             "site reported it with its last update:", "",
             "| site | epsilon | delta | last round |", "|---|---|---|---|"]
    for site, spent in sorted(privacy.get("sites", {}).items()):
        lines.append(f"| {site} | {spent['epsilon']:.3f} | {spent['delta']:.2g} | {spent['round']} |")
    return lines


def summary_table(summary: dict) -> Table:
    table = Table(title=f"fl-medlego: strategy {summary.get('strategy')}")
    for name in HEADER:
        table.add_column(name, justify="left" if name == "site" else "right")
    for row in summary_rows(summary):
        table.add_row(*row)
    return table


def run_figure(summary: dict, evaluations: list[dict], path) -> None:
    """Left: specialist vs merged test ACC per site. Right: merged test ACC per site over the rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    sites = list(summary["sites"])
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(sites))
    own = [summary["sites"][s]["specialist"].get("acc", np.nan) for s in sites]
    mix = [summary["sites"][s]["merged"].get("acc", np.nan) for s in sites]
    bars.bar(x - 0.2, own, 0.4, label="specialist")
    bars.bar(x + 0.2, mix, 0.4, label=f"merged ({summary.get('strategy')})")
    bars.set_xticks(x, sites)
    bars.set_ylim(0, 1)
    bars.set_ylabel("test ACC")
    bars.legend()
    for site in sites:
        points = sorted((e["round"], e["acc"]) for e in evaluations if e.get("site") == site)
        if points:
            curves.plot(*zip(*points), marker="o", label=site)
    curves.set_xlabel("round")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole: no tick at round 1.5
    curves.set_ylabel("merged model test ACC")
    curves.set_ylim(0, 1)
    curves.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learning_curve_figure(site: str, curves: dict[str, dict[str, list[float]]], path) -> None:
    """Accuracy per epoch of a new task, started from different adapters (Med-LEGO Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key in zip(axes, (VAL_ACC, TEST_ACC)):
        for label, curve in curves.items():
            ax.plot(range(1, len(curve[key]) + 1), curve[key], marker="o", label=label)
        ax.set_title(f"{site}: {key.replace('-acc', '')} ACC per epoch")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    axes[0].set_ylabel("ACC")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
