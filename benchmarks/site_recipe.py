"""The site recipe, measured on the evaluation protocol's tasks with several seeds (issue: a stronger recipe).

    python -m benchmarks.site_recipe --data-root /path/to/medmnist --seeds 3          # every variant
    python -m benchmarks.site_recipe --data-root bundled --seeds 1 --variants baseline,cosine --max-train 64

Each variant is a set of run-config overrides on top of the project's defaults (the shipped base, rank 4 on
Q and V, 5 epochs, lr 1e-2): the learning-rate schedule, light label-safe augmentation, class-balanced
loss, all three, and all three with SVD-LoRA on every linear layer of the blocks. One SVD-LoRA specialist
per (variant, task, seed), the epoch kept by validation ACC, scored on the test split, as the protocol
does (`fl_medlego.pretrain.evaluate`). Rows are kept in OUT/site_recipe.json as they finish (a rerun
resumes); the table gives mean +- std over seeds per task and the mean over tasks, with each variant's
paired difference to the baseline (seed by seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fl_medlego.compare.table import format_paired, paired_test
from fl_medlego.config import parse_run_config
from fl_medlego.files import write_json_atomic, write_text_atomic
from fl_medlego.pretrain.evaluate import TASKS
from fl_medlego.site import load_site_data

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "cosine": {"train.schedule": "cosine"},
    "augment": {"train.augment": "light"},
    "balance": {"train.class-balance": "loss"},
    "all three": {"train.schedule": "cosine", "train.augment": "light", "train.class-balance": "loss"},
    "all three + every linear": {"train.schedule": "cosine", "train.augment": "light",
                                 "train.class-balance": "loss",
                                 "lora.targets": "attn.qkv,attn.proj,mlp.fc1,mlp.fc2"},
}


def run_one(variant: str, task: str, seed: int, data_root: str, max_train: int) -> dict:
    cfg = parse_run_config({"sites": task, "data.root": data_root, "data.max-train": max_train, "seed": seed,
                            **VARIANTS[variant]})
    data = load_site_data(cfg, task)
    started = time.perf_counter()
    trained = cfg.kind_site().train(data, None, None)
    metrics = cfg.kind_site().evaluate(data, trained.update, trained.state.head)
    return {**metrics, "wall_s": round(time.perf_counter() - started, 1), "train_images": len(data.train)}


def table(rows: dict, variants: list[str], tasks: list[str], seeds: list[int]) -> str:
    """Test ACC per task (mean +- std over seeds), the mean over tasks, each variant's paired difference to
    the baseline (seed by seed: mean, 95 % interval, p; `*` below 0.05) and the mean macro-F1."""
    def by_seed(variant: str, metric: str) -> dict[int, float]:
        """seed -> the metric's mean over the tasks, for the seeds where every task has a row."""
        found = {}
        for seed in seeds:
            values = [rows.get(f"{variant}/{task}/{seed}", {}).get(metric) for task in tasks]
            if None not in values:
                found[seed] = float(np.mean(values))
        return found

    head = ("| variant | " + " | ".join(f"{t} ACC" for t in tasks)
            + " | mean ACC | vs baseline, ACC points (paired) | mean macro-F1 | seeds |")
    lines = [head, "|---|" + "---|" * (len(tasks) + 4)]
    for variant in variants:
        cells = []
        for task in tasks:
            values = [rows[k]["acc"] for k in (f"{variant}/{task}/{s}" for s in seeds) if k in rows]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-")
        means, f1 = by_seed(variant, "acc"), by_seed(variant, "f1")
        cells.append(f"{np.mean(list(means.values())):.3f} ± {np.std(list(means.values())):.3f}" if means else "-")
        paired = None if variant == "baseline" else paired_test(means, by_seed("baseline", "acc"))
        cells.append("" if paired is None else format_paired(paired, scale=100, digits=1))
        cells.append(f"{np.mean(list(f1.values())):.3f}" if f1 else "-")
        cells.append(str(len(means)))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+SEEDS-1 (split seeds "
                        "over processes; the rows of one -o folder need not come from one run)")
    parser.add_argument("--variants", help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--max-train", type=int, default=2500)
    parser.add_argument("-o", "--output", default=str(RESULTS / "site_recipe"))
    args = parser.parse_args(argv)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    tasks, seeds = args.tasks.split(","), list(range(args.first_seed, args.first_seed + args.seeds))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "site_recipe.json"
    saved = json.loads(path.read_text()) if path.is_file() else {"max_train": args.max_train, "rows": {}}
    if saved["max_train"] != args.max_train:
        raise SystemExit(f"{path} holds rows with --max-train {saved['max_train']}: use another -o")
    for seed in seeds:
        for variant in variants:
            for task in tasks:
                key = f"{variant}/{task}/{seed}"
                if key in saved["rows"]:
                    continue
                saved["rows"][key] = run_one(variant, task, seed, args.data_root, args.max_train)
                print(key, saved["rows"][key], flush=True)
                write_json_atomic(path, saved)
    text = table(saved["rows"], variants, tasks, seeds)
    write_text_atomic(out / "site_recipe.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
