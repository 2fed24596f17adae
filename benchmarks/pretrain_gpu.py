"""Pretrain the default base at FractalDB-1k scale on one GPU, inside a fixed wall-time budget.

    python -m benchmarks.pretrain_gpu --output OUT --budget-s 420          # on the GPU machine
    python -m benchmarks.pretrain_gpu --output /tmp/smoke --device cpu --images 2000 --budget-s 60 --max-steps 20

A probe run (same recipe and batch size, a small image set) measures seconds per image rendered and per
step; the real run then takes as many steps as fit the budget after rendering its set (at most
--max-steps), so that its cosine schedule ends where the run ends. Writes OUT/probe/, OUT/run/ (the
runner's folder: backbone.safetensors, pretrain.json, log.jsonl) and OUT/pretrain_gpu.json (the plan,
both timings, the device); the probe run and the checkpoint are deleted at the end (--keep-checkpoints
keeps them), so the folder holds only what is worth copying back. Needs torch and timm only: evaluate
the weights afterwards with `fl-medlego evaluate-base` on a machine that has the MedMNIST files.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch

from fl_medlego.files import write_json_atomic
from fl_medlego.pretrain import PretrainSettings, pretrain
from fl_medlego.pretrain.recipes import get_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--recipe", default="fractal-colour-sup-1k")
    parser.add_argument("--images", type=int, default=0, help="size of the real run's set (0 = the recipe's)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--budget-s", type=float, default=420, help="rendering + training of the real run")
    parser.add_argument("--max-steps", type=int, default=60_000)
    parser.add_argument("--probe-steps", type=int, default=60)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep the probe run and checkpoint.pt")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    recipe = get_recipe(args.recipe)
    images = args.images or recipe.images
    started = time.perf_counter()

    probe_images = min(images, 8 * recipe.categories if recipe.categories else 8192)
    t0 = time.perf_counter()
    probe = pretrain(PretrainSettings(args.recipe, args.probe_steps, args.batch_size, 0, images=probe_images),
                     out / "probe", save_every=10**9, progress=False, device=args.device, precision=args.precision)
    probe_total = time.perf_counter() - t0
    step_s = probe["train_wall_s"] / args.probe_steps  # warm-up included: a conservative rate
    render_s_per_image = max(probe_total - probe["train_wall_s"], 0.0) / probe_images
    render_estimate = render_s_per_image * images
    steps = int(min(args.max_steps, max(args.probe_steps, (args.budget_s - render_estimate) / step_s)))
    plan = {"recipe": args.recipe, "images": images, "batch_size": args.batch_size, "steps": steps,
            "epochs_of_the_set": round(steps * args.batch_size / images, 2), "probe_step_s": round(step_s, 5),
            "render_estimate_s": round(render_estimate, 1), "budget_s": args.budget_s}
    print(json.dumps(plan), flush=True)

    t0 = time.perf_counter()
    report = pretrain(PretrainSettings(args.recipe, steps, args.batch_size, 0, images=images), out / "run",
                      save_every=max(steps // 20, 1), progress=False, device=args.device, precision=args.precision)
    run_total = time.perf_counter() - t0
    summary = {**plan, "run_wall_s": round(run_total, 1), "train_wall_s": report["train_wall_s"],
               "render_and_setup_s": round(run_total - report["train_wall_s"], 1),
               "images_per_s": round(steps * args.batch_size / max(report["train_wall_s"], 1e-9), 1),
               "final_loss": report["final_loss"], "device": report["device"], "precision": report["precision"],
               "torch": torch.__version__, "total_wall_s": round(time.perf_counter() - started, 1),
               "fingerprint": report["fingerprint"]}
    if not args.keep_checkpoints:  # what a GPU session copies back: the weights and the reports, nothing else
        shutil.rmtree(out / "probe")
        (out / "run" / "checkpoint.pt").unlink(missing_ok=True)
    write_json_atomic(out / "pretrain_gpu.json", summary)
    print(json.dumps(summary, indent=2))
    loss = summary["final_loss"]
    return 0 if loss is not None and math.isfinite(loss) else 1


if __name__ == "__main__":
    raise SystemExit(main())
