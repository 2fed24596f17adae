"""Summaries as tables: Markdown for files, rich for the console."""

from __future__ import annotations

import math

from rich.table import Table

from .files import atomic_path
from .kinds import ReportColumns, get_kind, list_kinds
from .metrics import MAJORITY_MARGIN, at_majority_rate
from .privacy.coordinator import privacy_lines
from .wire import MAJORITY_RATE, TEST_ACC, VAL_ACC


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


MAJORITY_MARK = "†"  # a specialist ACC at its test split's majority-class rate


def specialist_at_majority_rate(entry: dict) -> bool:
    """A summary site entry's flag (computed again for a summary written before the flag existed)."""
    if "specialist_at_majority_rate" in entry:
        return bool(entry["specialist_at_majority_rate"])
    return at_majority_rate({MAJORITY_RATE: entry["merged"].get(MAJORITY_RATE, math.nan), **entry["specialist"]})


def summary_rows(summary: dict) -> list[list[str]]:
    rows = []
    for site, s in summary["sites"].items():
        own, mix = s["specialist"], s["merged"]
        own_acc = _fmt(own.get("acc")) + (f" {MAJORITY_MARK}" if specialist_at_majority_rate(s) else "")
        rows.append([site, own_acc, _fmt(own.get("auc")), _fmt(own.get("f1")), _fmt(mix.get("acc")),
                     _fmt(mix.get("auc")), _fmt(mix.get("f1")), _fmt(s["normalized_acc"])])
    rows.append(["mean", "", "", "", "", "", "", _fmt(summary["mean_normalized_acc"])])
    return rows


HEADER = ["site", "specialist ACC", "specialist AUC", "specialist F1", "merged ACC", "merged AUC", "merged F1",
          "normalized ACC"]


def status_line(summary: dict) -> str:
    """The run's status as summary.json states it ("completed", or "failed: why")."""
    status = str(summary.get("status") or "not recorded (a summary from before runs recorded it)")
    state, _, why = status.partition(": ")
    return f"Status: **{state}**: {why}" if why else f"Status: {status}"


def _cell(text: object) -> str:
    """Text for a Markdown table cell: one line, no column separator."""
    return " ".join(str(text).split()).replace("|", "\\|")


def site_status_lines(summary: dict) -> list[str]:
    """Each declared site's state in its latest round (merged, accepted, rejected or missing) and why."""
    status = summary.get("site_status") or {}
    if not status:
        return []
    lines = ["", "Sites (state in the latest round they took part in, and why):", "",
             "| site | state | round | reason |", "|---|---|---|---|"]
    lines += [f"| {_cell(site)} | {_cell(s.get('state', ''))} | {_cell(s.get('round', ''))} | "
              f"{_cell(s.get('reason') or '')} |" for site, s in status.items()]
    never = [site for site in summary.get("sites_missing") or [] if site not in status]
    if never:
        lines += ["", f"No node hosted: {', '.join(never)}."]
    return lines


def caution_lines(summary: dict) -> list[str]:
    """What the numbers do not say on their own: specialists that learned nothing, and ratios above 1."""
    lines = []
    trivial = [site for site, entry in summary["sites"].items() if specialist_at_majority_rate(entry)]
    if trivial:
        lines += ["", f"{MAJORITY_MARK} Warning: the specialist of {', '.join(trivial)} scored its test split's "
                  f"majority-class rate (ACC within {100 * MAJORITY_MARGIN:g} points of the share of the most frequent "
                  "class): it learned nothing a constant guess does not, and a normalized ACC against it flatters "
                  "the merged model."]
    above = {site: entry["normalized_acc"] for site, entry in summary["sites"].items()
             if entry["normalized_acc"] is not None and entry["normalized_acc"] > 1}
    if above:
        rounds = max((entry["merged"].get("round", 1) for entry in summary["sites"].values()), default=1)
        named = ", ".join(f"{site} {ratio:.2f}" for site, ratio in above.items())
        lines += ["", f"Normalized ACC above 1 ({named}): " + (
            f"the specialist is round 1's model (one round of local training from the base), while the merged "
            f"model had {rounds} rounds of training, so it is no ceiling here." if rounds > 1 else
            "the merged model scored above the site's own specialist on its test split.")]
    return lines


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


def headline_lines(summary: dict) -> list[str]:
    """Each kind's per-site headline metric of the merged models (the cross-modal kind's share of images routed to
    their own modality): its mean over the sites that reported it, then each site's value."""
    lines = []
    for section in kind_sections():
        for metric, label in section.per_site:
            values = {site: s["merged"][metric] for site, s in summary["sites"].items()
                      if _finite(s["merged"].get(metric))}
            if not values:
                continue
            each = (", ".join(f"{site} {value:.2f}" for site, value in values.items())
                    if len(values) <= MAX_DRAWN_SITES else f"{min(values.values()):.2f} to {max(values.values()):.2f}")
            lines.append(f"{label}, merged model: {sum(values.values()) / len(values):.3f} on average over "
                         f"{len(values)} sites ({each})")
    return lines


def summary_markdown(summary: dict) -> str:
    lines = [f"# Run summary: strategy `{summary.get('strategy')}`", "", status_line(summary), ""]
    if summary["sites"]:
        lines += [
            "Test metrics per site: the site's own specialist adapter vs. the merged adapter (each with the",
            "site's own head, or for cross-modal sites its class prompts). Normalized ACC = merged ACC / specialist "
            "ACC.",
            "",
            "| " + " | ".join(HEADER) + " |",
            "|" + "---|" * len(HEADER),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in summary_rows(summary)]
    else:
        lines.append("No test metrics: no site evaluated a merged model before the run ended.")
    for line in headline_lines(summary):
        lines += ["", line[0].upper() + line[1:] + "."]
    lines += caution_lines(summary)
    lines += site_status_lines(summary)
    for section in kind_sections():
        lines += section_lines(summary, section)
    lines += privacy_lines(summary.get("privacy") or {})
    lines += ["", f"Wall time: {summary.get('wall_time_s')} s"]
    return "\n".join(lines) + "\n"


def summary_table(summary: dict) -> Table:
    table = Table(title=f"fl-medlego: strategy {summary.get('strategy')}",
                  caption="\n".join(headline_lines(summary)) or None, caption_justify="left")
    for name in HEADER:
        table.add_column(name, justify="left" if name == "site" else "right")
    for row in summary_rows(summary):
        table.add_row(*row)
    return table


MAX_DRAWN_SITES = 24  # above it the figure shows distributions over the sites, not one bar or line per site


def run_figure(summary: dict, evaluations: list[dict], path) -> None:
    """summary.png: `summary_figure`, saved."""
    import matplotlib.pyplot as plt

    fig = summary_figure(summary, evaluations)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def summary_figure(summary: dict, evaluations: list[dict]):
    """Left: specialist vs merged test ACC per site. Right: merged test ACC per site over the rounds. Only what
    the run measured is drawn; a run that measured nothing gets a figure saying why (its status and sites')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [s for s in summary["sites"] if _finite(summary["sites"][s]["specialist"].get("acc"))
             or _finite(summary["sites"][s]["merged"].get("acc"))]
    curves: dict[str, list[tuple[int, float]]] = {}
    for e in evaluations:
        if e.get("site") is not None and _finite(e.get("acc")):
            curves.setdefault(e["site"], []).append((e["round"], e["acc"]))
    curves = {site: sorted(points) for site, points in curves.items()}
    failed = str(summary.get("status", "completed")) != "completed"
    if not sites and not curves:
        fig, ax = plt.subplots(figsize=(11, 4))
        ax.axis("off")
        ax.text(0.01, 0.98, _failure_text(summary), va="top", ha="left", family="monospace", fontsize=9,
                transform=ax.transAxes)
        return fig
    fig, (bars, rounds) = plt.subplots(1, 2, figsize=(11, 4.6 if failed else 4))
    _accuracy_bars(bars, summary, sites)
    _round_curves(rounds, curves)
    if failed:
        fig.suptitle(_wrapped(status_line(summary).replace("**", ""), 110, 2), fontsize=9, color="tab:red")
    fig.tight_layout()
    return fig


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _wrapped(text: str, width: int, lines: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder=" …"))


def _failure_text(summary: dict) -> str:
    """What a run that measured nothing says instead of empty axes: its status and each site's state."""
    lines = [_wrapped(status_line(summary).replace("**", ""), 120, 4), "", "No site evaluated a merged model.", ""]
    for site, s in (summary.get("site_status") or {}).items():
        reason = f": {s['reason']}" if s.get("reason") else ""
        lines.append(_wrapped(f"{site}: {s.get('state')} (round {s.get('round')}){reason}", 120, 2))
    return "\n".join(lines)


def _accuracy_bars(ax, summary: dict, sites: list[str]) -> None:
    import numpy as np

    if not sites:
        ax.axis("off")
        ax.text(0.5, 0.5, "no site has test metrics", ha="center", va="center", transform=ax.transAxes)
        return
    if len(sites) > MAX_DRAWN_SITES:
        _accuracy_histogram(ax, summary, sites)
        return
    x = np.arange(len(sites))
    for offset, model, label in ((-0.2, "specialist", "specialist"),
                                 (0.2, "merged", f"merged ({summary.get('strategy')})")):
        values = [summary["sites"][s][model].get("acc", np.nan) for s in sites]
        if any(_finite(v) for v in values):  # a legend entry only for bars that are drawn
            ax.bar(x + offset, values, 0.4, label=label)
    ax.set_xticks(x, sites)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test ACC")
    ax.legend()


def _accuracy_histogram(ax, summary: dict, sites: list[str]) -> None:
    """Many sites: how their specialists' and merged ACC are distributed, instead of a bar per site."""
    label = f"merged ({summary.get('strategy')})"
    for model, name in (("specialist", "specialist"), ("merged", label)):
        values = [v for s in sites if _finite(v := summary["sites"][s][model].get("acc"))]
        if values:
            ax.hist(values, bins=20, range=(0, 1), alpha=0.6, label=f"{name}, {len(values)} sites")
    ax.set_xlabel("test ACC")
    ax.set_ylabel("sites")
    ax.legend()


def _round_curves(ax, curves: dict[str, list[tuple[int, float]]]) -> None:
    from matplotlib.ticker import MaxNLocator

    if not curves:
        ax.axis("off")
        ax.text(0.5, 0.5, "no round's merged model was evaluated", ha="center", va="center", transform=ax.transAxes)
        return
    if len(curves) > MAX_DRAWN_SITES:  # one line per site would be unreadable, and slow to draw at 10,000 sites
        _round_band(ax, curves)
    else:
        for site, points in curves.items():
            ax.plot(*zip(*points), marker="o", label=site)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole: no tick at round 1.5
    ax.set_ylabel("merged model test ACC")
    ax.set_ylim(0, 1)
    ax.legend()


def _round_band(ax, curves: dict[str, list[tuple[int, float]]]) -> None:
    """The median of the sites' merged ACC per round, with the band their 10th to 90th percentiles span."""
    import numpy as np

    by_round: dict[int, list[float]] = {}
    for points in curves.values():
        for round_, acc in points:
            by_round.setdefault(round_, []).append(acc)
    rounds = sorted(by_round)
    low, median, high = (np.array([np.percentile(by_round[r], q) for r in rounds]) for q in (10, 50, 90))
    ax.fill_between(rounds, low, high, alpha=0.3, label="10th-90th percentile of sites")
    ax.plot(rounds, median, marker="o", label=f"median of {len(curves)} sites")


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
