"""Site training throughput (images/s): the default preset and ViT-B/16 at 224 px, on CPU and GPU.

    python -m benchmarks.throughput                      # every device torch sees here
    python -m benchmarks.throughput --devices cpu --skip-vit-b

What is timed is one local epoch of the adapter site kind's training loop (`fl_medlego.train.train_epoch`,
the loop `fit` runs: uint8 batches moved to the device, SVD-LoRA forward under autocast and backward,
AdamW, the orthogonality regulariser) on synthetic images of the model's input size, after a warm-up
epoch; validation is left out (it is not training throughput, and its metrics need MedMNIST). Needs
torch and timm only (no Flower, no MedMNIST), so that it runs on a bare GPU machine. Writes
results/throughput.csv (one row per case) and prints the table
with one column per device.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from fl_medlego.config import parse_run_config
from fl_medlego.data import SiteData, SiteSpec, Split
from fl_medlego.device import placed
from fl_medlego.files import atomic_path
from fl_medlego.train import PlainSteps, StepPlan, train_epoch

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ["model", "image_size", "device", "device_name", "precision", "batch_size", "images", "seconds",
          "images_per_s", "threads"]

# (preset, input size, batch size, training images per timed epoch on CPU / on a GPU)
CASES = [("vit_medmnist_28", 28, 64, 1024, 32768), ("vit_base_patch16_224", 224, 32, 64, 4096)]


def _split(n: int, size: int, generator: torch.Generator) -> Split:
    return Split(torch.randint(0, 256, (n, size, size, 3), generator=generator, dtype=torch.uint8),
                 torch.randint(0, 8, (n, 1), generator=generator))


def _site(n: int, size: int) -> SiteData:
    g = torch.Generator().manual_seed(0)
    return SiteData(SiteSpec("synthetic", "bloodmnist", 0, 1), "multi-class", 8, "synthetic", "synthetic",
                    _split(n, size, g), _split(16, size, g), _split(16, size, g))


def _epoch_seconds(cfg, data: SiteData, plan: StepPlan) -> float:
    """One timed local epoch of a fresh site model (the adapter kind's), already on the device."""
    model = cfg.kind_site().build_model(data, None, None)
    params = [p for p in model.parameters() if p.requires_grad]
    with placed(model, plan.device):
        stepper = PlainSteps(model, params, cfg.train)
        model.train()
        if plan.device.type == "cuda":
            torch.cuda.synchronize(plan.device)
        started = time.perf_counter()
        train_epoch(stepper, data.train, data.task, model.image_size, cfg.train, plan)
        if plan.device.type == "cuda":
            torch.cuda.synchronize(plan.device)
        return time.perf_counter() - started


def measure(model_name: str, size: int, batch_size: int, images: int, device: str) -> dict:
    cfg = parse_run_config({"model.name": model_name, "model.pretrained": "none", "data.image-size": size,
                            "train.batch-size": batch_size, "train.local-epochs": 1, "train.device": device})
    data = _site(images, size)
    plan = StepPlan.for_training(cfg.train, data.train, data.task)
    _epoch_seconds(cfg, _site(min(images, 4 * batch_size), size), plan)  # warm-up: kernels, allocator, autotuning
    seconds = _epoch_seconds(cfg, data, plan)
    where = plan.device
    return {"model": model_name, "image_size": size, "device": where.type,
            "device_name": torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu",
            "precision": str(plan.dtype).removeprefix("torch."), "batch_size": batch_size, "images": images,
            "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 1),
            "threads": torch.get_num_threads()}


def table(rows: list[dict]) -> str:
    devices = list(dict.fromkeys(f"{r['device_name']} ({r['precision']})" for r in rows))
    lines = ["| model | input | batch | " + " | ".join(f"{d} images/s" for d in devices) + " |",
             "|---|---|---|" + "---|" * len(devices)]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        by_device = {f"{r['device_name']} ({r['precision']})": r["images_per_s"] for r in mine}
        lines.append(f"| {model} | {mine[0]['image_size']} px | {mine[0]['batch_size']} | "
                     + " | ".join(str(by_device.get(d, "-")) for d in devices) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", help="comma-separated (default: cpu, and cuda when torch sees a GPU)")
    parser.add_argument("--skip-vit-b", action="store_true", help="the default preset only")
    parser.add_argument("--cpu-images", type=int, help="override the timed epoch's size on the CPU")
    parser.add_argument("--output", default=str(RESULTS / "throughput.csv"))
    args = parser.parse_args(argv)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for model, size, batch, cpu_images, gpu_images in CASES:
        if args.skip_vit_b and model != CASES[0][0]:
            continue
        for device in devices:
            images = (args.cpu_images or cpu_images) if device == "cpu" else gpu_images
            row = measure(model, size, batch, images, device)
            print(row, flush=True)
            rows.append(row)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
