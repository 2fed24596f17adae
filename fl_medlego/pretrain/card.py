"""Ship a pretrained base: copy its weights into the package and write its model card from the measured files.

Every number in the card comes from `pretrain.json` (the runs) and `results.json` (the evaluation
protocol), so the card cannot drift from the measurements; the card records the file's SHA-256, which
the tests check against the shipped file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..files import write_text_atomic
from .evaluate import file_sha256
from .natural import SOURCES
from .table import render_markdown, table_rows

TARGET_POINTS = 5.0  # the gain over the random-init base that the project aims for, on every task

_DATA = {
    "fractal": "FractalDB-style IFS fractals drawn by `fl_medlego.pretrain.fractals` (chaos game, seeded): "
               "no external data, nothing to license.",
    "procedural": "dead-leaves images and coloured 1/f noise drawn by `fl_medlego.pretrain.procedural` (seeded): "
                  "no external data, nothing to license.",
    "natural": "random crops of 12 photographs shipped with scikit-image, each public domain or CC0 by its "
               "docstring: " + ", ".join(f"{k} ({v})" for k, v in SOURCES.items()) + ".",
}
_DATA["mixed"] = " ".join(_DATA[k] for k in ("fractal", "procedural", "natural"))


def _candidate_rows(runs: dict[str, dict], rows: list[dict]) -> list[str]:
    by_model = {r["model"]: r for r in rows}
    lines = ["| candidate | objective | steps x batch | images seen | pretraining wall time | mean ACC (gain) |",
             "|---|---|---|---|---|---|"]
    for name, report in runs.items():
        row = by_model.get(f"{name} + SVD-LoRA", {})
        score = f"{row['mean_acc']:.3f} ({row.get('mean_gain', 0) * 100:+.1f})" if row else "not evaluated"
        s = report["settings"]
        lines.append(f"| {name} | {report['recipe']['objective']} on {report['recipe']['source']} | "
                     f"{s['steps']} x {s['batch_size']} | {report['images_seen']:,} | "
                     f"{report['train_wall_s'] / 60:.1f} min ({report['threads']} thread(s)) | {score} |")
    return lines


def verdict(results: dict, name: str) -> tuple[bool, str]:
    """Whether base `name` gains TARGET_POINTS ACC over the random init on average and on every task."""
    rows = {r["model"]: r for r in table_rows(results)}
    row = rows[f"{name} + SVD-LoRA"]
    tasks = results["settings"]["tasks"]
    gains = {t: row[f"{t}_gain"] * 100 for t in tasks}
    met = row["mean_gain"] * 100 >= TARGET_POINTS and all(g >= TARGET_POINTS for g in gains.values())
    detail = ", ".join(f"{t} {g:+.1f}" for t, g in gains.items())
    text = (f"mean {row['mean_gain'] * 100:+.1f} ACC points over the random-init base ({detail}); "
            f"target +{TARGET_POINTS:.0f} on average and on every task: {'met' if met else 'NOT met'}.")
    return met, text


def read_report(candidate: str | Path) -> dict:
    """A candidate's pretraining report: a run folder's `pretrain.json`, or such a report kept as a file
    (docs/results/base_eval/runs/ keeps one per candidate, so a card can be rebuilt without the runs)."""
    path = Path(candidate)
    path = path / "pretrain.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no pretraining report at {path}: give a pretrain-base run folder or its "
                                "pretrain.json")
    return json.loads(path.read_text())


def ship_base(run_dir: str | Path, eval_dir: str | Path, name: str, destination: str | Path,
              candidates: dict[str, str | Path], next_steps: str = "") -> tuple[Path, Path]:
    """Copy RUN_DIR/backbone.safetensors to DESTINATION.safetensors and write DESTINATION.md, its card."""
    run_dir, destination = Path(run_dir), Path(destination)
    report = json.loads((run_dir / "pretrain.json").read_text())
    results = json.loads((Path(eval_dir) / "results.json").read_text())
    sha = file_sha256(run_dir / "backbone.safetensors")
    if results["bases"].get(name) != sha:  # checked before anything is copied over the shipped base
        raise ValueError(f"the evaluation in {eval_dir} did not score this file as {name!r}: evaluate it first")
    runs = {n: read_report(p) for n, p in candidates.items()}  # before the copy: a bad call changes nothing
    weights = destination.with_suffix(".safetensors")
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "backbone.safetensors", weights)
    _, summary = verdict(results, name)
    s, recipe = report["settings"], report["recipe"]
    card = [
        f"# {weights.name}: an offline-pretrained base for `{s['model_name']}`",
        "",
        f"- SHA-256: `{sha}`",
        f"- Size: {weights.stat().st_size / 2**20:.1f} MiB (float32 safetensors, backbone only, no head)",
        f"- Use: `model.pretrained = \"bundled\"` (the default of every scenario), or `create_backbone("
        f"\"{s['model_name']}\", pretrained=\"bundled\")`.",
        f"- Result: {summary}",
        "",
        "## Recipe",
        "",
        f"`fl-medlego pretrain-base --recipe {recipe['name']} --steps {s['steps']} --batch-size {s['batch_size']} "
        f"--seed {s['seed']} --threads {report['threads']} -o RUN_DIR` ({recipe['summary']}).",
        "",
        f"- Objective: {recipe['objective']}; AdamW, peak lr {recipe['lr']}, weight decay {recipe['weight_decay']}, "
        f"{s['warmup_fraction']:.0%} linear warm-up then cosine decay, gradient norm clipped at 1.",
        f"- Augmentation: {recipe['augment']}.",
        f"- Data: {report['pretraining_images']:,} images at 32 px, {report['images_seen']:,} seen in training. "
        + _DATA[recipe["source"]],
        "- No patient image, no MedMNIST image and no download was used at any point.",
        f"- Seed {s['seed']}; hardware {report['hardware']}, trained on {report.get('device', 'cpu')} with "
        f"{report['threads']} torch thread(s), "
        f"torch {report['torch']}; pretraining wall time {report['train_wall_s'] / 60:.1f} min; final loss "
        f"{report['final_loss']}.",
        "- Licence of the weights: Apache-2.0, as the project.",
        "",
        "## Every candidate tried",
        "",
        *_candidate_rows(runs, table_rows(results)),
        "",
        "## Evaluation protocol (`fl-medlego evaluate-base`)",
        "",
        f"SVD-LoRA specialists (rank 4 on the Q and V rows of every attn.qkv, {results['settings']['epochs']} epochs, "
        f"lr 0.01, the project's defaults) plus a linear head, per task; training images capped at "
        f"{results['settings']['max_train'] or 'all'} per task, full validation set picks the epoch, full test set "
        f"scores; seed {results['settings']['seed']}. Cells: test ACC / AUC (ACC points over the random-init base).",
        "",
        render_markdown(results).rstrip(),
    ]
    if next_steps:
        card += ["", "## Limits and what to try next", "", next_steps.strip()]
    card_path = destination.with_suffix(".md")
    write_text_atomic(card_path, "\n".join(card) + "\n")
    return weights, card_path
