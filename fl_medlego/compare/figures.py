"""A comparison's figures: the table as a heatmap (table.png) and the Med-LEGO energy sweep (energy_sweep.png).

Each says how many seeds its numbers come from, and none scales a number to look larger than it is: every
column of the heatmap has its own colour scale (ACC on 0-1, the normalized ACC centred on the specialists'
1), and the sweep's y-axis always holds the specialists' level.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..files import atomic_path
from .table import NORMALIZED, summarize


def seeds_text(seeds: int) -> str:
    """"1 seed" or "mean over N seeds": what a figure's numbers are."""
    return "1 seed" if seeds == 1 else f"mean over {seeds} seeds"


def heatmap(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = heatmap_figure(results)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130)
    plt.close(fig)


def heatmap_figure(results: dict):
    """Rows are strategies, columns each site's test ACC and the mean normalized ACC. Each column is one image
    with its own colour scale: the ACC columns on ACC's 0-1, the ratio on a scale of its own centred on 1 (the
    specialists' level): a ratio is not an accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize, TwoSlopeNorm

    table = summarize(results)
    cols = [f"{s} ACC" for s in results["sites"]] + [NORMALIZED]
    rows = list(table)
    values = np.array([[table[r][c][0] for c in cols] for r in rows], dtype=float).reshape(len(rows), len(cols))
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 3.0, 0.45 * len(rows) + 1.5))
    acc_norm = Normalize(vmin=0.0, vmax=1.0)
    acc_image = None
    for j, column in enumerate(cols):
        ratio = column == NORMALIZED
        finite = values[:, j][np.isfinite(values[:, j])]
        if ratio:
            spread = max(0.01, float(np.max(np.abs(finite - 1.0)))) if finite.size else 0.01
            norm, cmap = TwoSlopeNorm(vcenter=1.0, vmin=1.0 - spread, vmax=1.0 + spread), "RdBu"
        else:
            norm, cmap = acc_norm, "viridis"
        image = ax.imshow(values[:, j:j + 1], cmap=cmap, norm=norm, aspect="auto",
                          extent=(j - 0.5, j + 0.5, len(rows) - 0.5, -0.5))
        acc_image = acc_image if ratio else image
        for i in range(len(rows)):
            if math.isfinite(values[i, j]):
                red, green, blue, _ = image.cmap(image.norm(values[i, j]))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xticks(range(len(cols)), [c.replace(" ACC", "") for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(f"test ACC ({seeds_text(len(results['seeds']))}); {NORMALIZED}: own scale, 1 = specialists")
    if acc_image is not None:
        fig.colorbar(acc_image, ax=ax, fraction=0.03, label="test ACC")
    fig.tight_layout()
    return fig


def energy_plot(points: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = energy_figure(points)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130)
    plt.close(fig)


# The sweep's y-axis spans at least this far below the specialists' level (1): a difference of a few thousandths
# between thresholds looks like one.
SPAN_BELOW = 0.2


def energy_figure(points: list[dict]):
    """Mean normalized ACC per threshold v (each seed's value as a dot, ± std over seeds when there are several)
    and the merged rank kept; the y-axis holds the specialists' level 1 and at least SPAN_BELOW below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = [p["energy"] for p in points]
    seeds = max((len(p.get("by_seed", {})) for p in points), default=0)
    fig, acc = plt.subplots(figsize=(5.5, 3.5))
    means = [p["normalized_acc"] for p in points]
    if seeds > 1:
        acc.errorbar(v, means, yerr=[p["std"] for p in points], marker="o", color="tab:blue", capsize=3,
                     label=f"mean ± std over {seeds} seeds")
        for p in points:
            each = list(p.get("by_seed", {}).values())
            acc.scatter([p["energy"]] * len(each), each, s=10, color="tab:blue", alpha=0.4)
    else:
        acc.plot(v, means, marker="o", color="tab:blue", label="1 seed (no spread measured)")
    acc.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="specialists (1)")
    drawn = [x for p in points for x in (p["normalized_acc"] - p["std"], p["normalized_acc"] + p["std"],
                                         *p.get("by_seed", {}).values()) if math.isfinite(x)]
    low, high = min([1.0 - SPAN_BELOW, *drawn]), max([1.0, *drawn])
    acc.set_ylim(low - 0.02, high + 0.02)
    acc.set_xlabel("Med-LEGO energy threshold v")
    acc.set_ylabel("mean normalized ACC", color="tab:blue")
    acc.legend(loc="lower left", fontsize=8)
    acc.set_title(f"energy sweep ({seeds_text(max(seeds, 1))})", fontsize=10)
    rank = acc.twinx()
    rank.plot(v, [p["merged_rank"] for p in points], marker="s", color="tab:orange")
    rank.set_ylabel("merged rank kept (max over matrices)", color="tab:orange")
    fig.tight_layout()
    return fig
