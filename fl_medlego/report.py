"""Summaries as tables: Markdown for files, rich for the console."""

from __future__ import annotations

import math

from rich.table import Table


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_rows(summary: dict) -> list[list[str]]:
    rows = []
    for site, s in summary["sites"].items():
        own, mix = s["specialist"], s["merged"]
        rows.append([site, _fmt(own.get("acc")), _fmt(own.get("auc")), _fmt(mix.get("acc")), _fmt(mix.get("auc")),
                     _fmt(s["normalized_acc"])])
    rows.append(["mean", "", "", "", "", _fmt(summary["mean_normalized_acc"])])
    return rows


HEADER = ["site", "specialist ACC", "specialist AUC", "merged ACC", "merged AUC", "normalized ACC"]


def summary_markdown(summary: dict) -> str:
    lines = [
        f"# Run summary: strategy `{summary.get('strategy')}`",
        "",
        "Test metrics per site: the site's own specialist adapter vs. the merged adapter (each with the",
        "site's own head). Normalized ACC = merged ACC / specialist ACC.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(summary)]
    lines += ["", f"Wall time: {summary.get('wall_time_s')} s"]
    return "\n".join(lines) + "\n"


def summary_table(summary: dict) -> Table:
    table = Table(title=f"fl-medlego: strategy {summary.get('strategy')}")
    for name in HEADER:
        table.add_column(name, justify="left" if name == "site" else "right")
    for row in summary_rows(summary):
        table.add_row(*row)
    return table
