"""The evaluation protocol's table (Markdown + CSV): ACC / AUC per task, mean ACC, gain over random init."""

from __future__ import annotations

import csv
from pathlib import Path

from ..files import atomic_path, write_text_atomic
from .evaluate import RESNET18_28_ACC


def table_rows(results: dict) -> list[dict]:
    """One row per (base, mode) with acc/auc per task, the mean ACC and the gain over the random init."""
    tasks = results["settings"]["tasks"]
    rows: dict[tuple[str, str], dict] = {}
    for key, row in results["rows"].items():
        name, mode, task = key.split("/")
        if task in tasks:
            rows.setdefault((name, mode), {})[task] = row
    reference = rows.get(("random-init", "lora"), {})
    out = []
    for (name, mode), by_task in rows.items():
        if len(by_task) < len(tasks):
            continue
        label = f"{name} + SVD-LoRA" if mode == "lora" else f"{name}, full fine-tuning"
        entry = {"model": label, "mean_acc": sum(by_task[t]["acc"] for t in tasks) / len(tasks)}
        for t in tasks:
            entry[f"{t}_acc"], entry[f"{t}_auc"] = by_task[t]["acc"], by_task[t]["auc"]
            if t in reference:
                entry[f"{t}_gain"] = by_task[t]["acc"] - reference[t]["acc"]
        if len(reference) == len(tasks):
            entry["mean_gain"] = entry["mean_acc"] - sum(reference[t]["acc"] for t in tasks) / len(tasks)
        entry["wall_s"] = sum(by_task[t]["wall_s"] for t in tasks)
        out.append(entry)
    if all(t in RESNET18_28_ACC for t in tasks):
        out.append({"model": "MedMNIST v2 ResNet-18 (28 px), reference",
                    "mean_acc": sum(RESNET18_28_ACC[t] for t in tasks) / len(tasks),
                    **{f"{t}_acc": RESNET18_28_ACC[t] for t in tasks}})
    return out


def _cell(entry: dict, task: str) -> str:
    acc, auc, gain = entry.get(f"{task}_acc"), entry.get(f"{task}_auc"), entry.get(f"{task}_gain")
    text = f"{acc:.3f}" if acc is not None else "-"
    text += f" / {auc:.3f}" if auc is not None else ""
    if gain is not None and not entry["model"].startswith("random-init + "):
        text += f" ({gain * 100:+.1f})"
    return text


def render_markdown(results: dict) -> str:
    tasks = results["settings"]["tasks"]
    lines = ["| model | " + " | ".join(f"{t} ACC / AUC" for t in tasks) + " | mean ACC | train+eval time |",
             "|---" * (len(tasks) + 3) + "|"]
    for e in table_rows(results):
        is_reference = e["model"].startswith("random-init + ")
        gain = f" ({e['mean_gain'] * 100:+.1f})" if "mean_gain" in e and not is_reference else ""
        wall = f"{e['wall_s'] / 60:.1f} min" if "wall_s" in e else "-"
        lines.append(f"| {e['model']} | " + " | ".join(_cell(e, t) for t in tasks)
                     + f" | {e['mean_acc']:.3f}{gain} | {wall} |")
    lines.append("")
    lines.append("In brackets: ACC points gained over the random-init base with the same adapters. "
                 "ResNet-18 row: test ACC published with MedMNIST v2 (full training sets, 100 epochs).")
    return "\n".join(lines) + "\n"


def write_tables(results: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    md = out / "table.md"
    write_text_atomic(md, render_markdown(results))
    rows = table_rows(results)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "model", k))
    with atomic_path(out / "table.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return [md, out / "table.csv"]
