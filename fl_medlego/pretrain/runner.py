"""Pretrain a backbone with a recipe: seeded, resumable from its folder, with a progress bar.

The folder holds `settings.json` (what is being run; a resume must ask for the same), `checkpoint.pt`
(model, objective, optimiser, step; written atomically every `save_every` steps), `log.jsonl` (loss and
throughput), and at the end `backbone.safetensors` (the backbone alone, the file `model.pretrained` takes)
plus `pretrain.json` (settings, wall time, hardware).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..augment import augment
from ..device import autocast, resolve_precision, to_device
from ..device import resolve_device as _resolve_device
from ..files import atomic_path, write_json_atomic
from ..models import create_backbone, fingerprint, preset_image_size
from ..seeds import step_seed
from .objectives import build_objective
from .recipes import build_images, get_recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainSettings:
    recipe: str
    steps: int
    batch_size: int = 256
    seed: int = 0
    model_name: str = "vit_medmnist_28"
    warmup_fraction: float = 0.05
    images: int = 0  # size of the generated pretraining set (0 = the recipe's)

    def __post_init__(self) -> None:
        get_recipe(self.recipe)
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"pretraining needs steps >= 1 and batch size >= 2, got {self.steps}, {self.batch_size}")


def _learning_rate(step: int, settings: PretrainSettings, peak: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, int(settings.steps * settings.warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))


def _check_settings(out: Path, settings: PretrainSettings) -> None:
    path = out / "settings.json"
    wanted = dataclasses.asdict(settings)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != wanted:
            diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
            raise ValueError(f"{out} holds a pretraining run with other settings (saved, asked): {diff}; "
                             "use a new output folder or the same settings to resume")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, wanted)


def _last_logged_loss(out: Path) -> float | None:
    lines = (out / "log.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["loss"] if lines else None


def _save_atomic(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def resolve_device(name: str) -> torch.device:
    """"auto" -> the GPU when torch sees one, else the CPU; a named device must exist."""
    return _resolve_device(name, fix="use --device cpu or auto")


def pretrain(settings: PretrainSettings, out_dir: str | Path, save_every: int = 100, progress: bool = True,
             stop_after: int | None = None, device: str = "cpu", precision: str = "float32") -> dict | None:
    """Run (or resume) a pretraining; returns the contents of `pretrain.json`.

    `stop_after` ends this call at that step, checkpointed, and returns None: a long run can be done in pieces.
    `device` ("cpu", "cuda", "auto") is where the model trains, renders fractals and augments; every random
    draw (instances, batches, augmentation) is made on the CPU from seeded generators, so the data a run
    sees does not depend on the device (a resume may change device). `precision` as train.precision
    (fl_medlego.device): "auto" is bf16 autocast on a GPU that supports it.
    """
    out = Path(out_dir)
    where = resolve_device(device)
    dtype = resolve_precision(precision, where)
    _check_settings(out, settings)
    recipe = get_recipe(settings.recipe)
    if settings.images:
        recipe = dataclasses.replace(recipe, images=settings.images)
    image_size = preset_image_size(settings.model_name)

    start = time.perf_counter()
    images, labels = build_images(recipe, settings.seed, render_device=where if where.type == "cuda" else None)
    images = torch.from_numpy(images)
    labels = torch.from_numpy(labels).long() if labels is not None else None
    log.info("recipe %s: %d pretraining images made in %.1f s", recipe.name, len(images), time.perf_counter() - start)

    backbone = create_backbone(settings.model_name, num_classes=0, seed=settings.seed)
    with torch.random.fork_rng(devices=[]):  # seeded like the backbone: the run depends on its settings alone
        torch.manual_seed(settings.seed)
        objective = build_objective(recipe.objective, backbone, recipe)
    backbone.to(where)
    objective.to(where)
    params = [*backbone.parameters(), *objective.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)

    step, elapsed = 0, 0.0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        backbone.load_state_dict(state["backbone"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        log.info("resuming %s at step %d/%d", out, step, settings.steps)

    backbone.train()
    bar = tqdm(total=settings.steps, initial=step, desc=f"pretrain {recipe.name}", disable=not progress)
    with (out / "log.jsonl").open("a") as log_file:
        t_last = time.perf_counter()
        while step < min(settings.steps, stop_after or settings.steps):
            # Each step's batch and augmentation depend only on (seed, step): a resumed run sees the same data.
            generator = torch.Generator().manual_seed(step_seed(settings.seed, step))
            batch = torch.randint(0, len(images), (settings.batch_size,), generator=generator)
            # Each call draws one augmented view of the batch on the CPU, from the step's generator.
            view = functools.partial(augment, to_device(images[batch], where), image_size, recipe.augment, generator)
            with autocast(where, dtype):
                loss = objective.step_loss(backbone, view, labels[batch] if labels is not None else None, generator,
                                           where)
            loss = loss.float()
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, settings, recipe.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % save_every == 0 or step in (settings.steps, stop_after):
                now = time.perf_counter()
                elapsed += now - t_last
                t_last = now
                _save_atomic({"backbone": backbone.state_dict(), "objective": objective.state_dict(),
                              "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed}, checkpoint)
                log_file.write(json.dumps({"step": step, "loss": round(loss.item(), 5), "elapsed_s": round(elapsed, 1),
                                           "lr": optimizer.param_groups[0]["lr"]}) + "\n")
                log_file.flush()
    bar.close()
    if step < settings.steps:
        return None

    weights = out / "backbone.safetensors"
    backbone.cpu()
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(tmp),
                  metadata={"recipe": recipe.name, "model": settings.model_name})
    report = {
        "settings": dataclasses.asdict(settings), "recipe": dataclasses.asdict(recipe),
        "pretraining_images": len(images), "images_seen": settings.steps * settings.batch_size,
        "train_wall_s": round(elapsed, 1), "final_loss": _last_logged_loss(out),
        "fingerprint": fingerprint(backbone), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu",
        "precision": str(dtype).removeprefix("torch."),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
    }
    write_json_atomic(out / "pretrain.json", report)
    return report
