"""Local training and evaluation of one site's model (plain PyTorch, no Flower)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import AugmentConfig, augment_floats
from .data.sites import Split
from .device import (
    DEVICE_CHOICES,
    PRECISIONS,
    autocast,
    check_device_name,
    placed,
    resolve_device,
    resolve_precision,
    to_device,
)
from .lora import SVDLoRAConfig, orthogonality_penalty
from .metrics import MULTI_LABEL, classification_metrics
from .seeds import global_draws_from
from .settings import check_group, setting

log = logging.getLogger(__name__)


SCHEDULES = ("constant", "cosine")
AUGMENTS = ("none", "light")
CLASS_BALANCE = ("none", "loss")
# Mild and label-safe: no right-angle rotations (chest X-rays and CT slices have an up), brightness,
# contrast and saturation within 10 %, crops that keep at least 85 % of the side.
LIGHT_AUGMENT = AugmentConfig(min_scale=0.85, colour=0.1, grey=0.0, rotate=False)


@dataclass
class TrainConfig:
    PREFIX: ClassVar[str] = "train."

    epochs: int = setting(5, "local epochs per round; a site keeps its best epoch by validation ACC",
                          key="train.local-epochs", low=1)
    batch_size: int = setting(64, "images per step of local AdamW training", low=1)
    lr: float = setting(0.01, "learning rate of local AdamW training (adapter and head)", above=0)
    weight_decay: float = setting(0.01, "AdamW weight decay", low=0)
    orth_weight: float = SVDLoRAConfig.orth_weight  # the adapter's regulariser (0 for full fine-tuning)
    seed: int = 0
    progress: bool = False  # a tqdm bar per epoch (the CLI turns it on; Flower logs stay line-based)
    # fl_medlego.device: resolved where the site trains, not where the run is configured
    device: str = setting("auto", "where a site trains: 'auto' = the GPU torch sees at that site, else the CPU; "
                          f"or {', '.join(DEVICE_CHOICES[1:])}", check=check_device_name,
                          accepts=", ".join(DEVICE_CHOICES))
    precision: str = setting("auto", "'auto' = bf16 autocast on a GPU that supports it, float32 on the CPU",
                             choices=PRECISIONS)
    schedule: str = setting("constant", "'cosine': linear warm-up over train.warmup of the steps, then cosine "
                            "decay to zero", choices=SCHEDULES)
    warmup: float = setting(0.1, "share of the steps warmed up with the cosine schedule", low=0, below=1)
    augment: str = setting("none", "'light': crops of at least 85 %, brightness, contrast and saturation within "
                           "10 %, no rotations, flips except for left/right classes", choices=AUGMENTS)
    flips: bool = True  # the site kind turns them off for data sets with left / right classes
    class_balance: str = setting("none", "'loss': cross-entropy weighted by inverse class frequency at each site",
                                 choices=CLASS_BALANCE)

    def __post_init__(self) -> None:
        check_group(self)


@dataclass(frozen=True)
class EpochReport:
    """What a person following a site's training wants to see after each epoch."""

    epoch: int
    epochs: int
    train_loss: float
    val_acc: float
    seconds: float  # this epoch's training and validation


def progress_line(site: str, report: EpochReport) -> str:
    """One line a person can follow while a site trains."""
    return (f"site {site}: epoch {report.epoch}/{report.epochs}, train loss {report.train_loss:.4f}, "
            f"val ACC {report.val_acc:.4f} ({report.seconds:.1f} s)")


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    num_examples: int
    history: list[dict[str, float]]
    steps: int = 0  # optimizer steps taken (DP-SGD's accountant counts them)


def to_model_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, 3, size, size) in [-1, 1]; grayscale is repeated to 3 channels."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: str, weight: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Cross-entropy (BCE per finding for multi-label); `weight` per class (multi-label: per finding's positives)."""
    if task == MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weight)
    return F.cross_entropy(logits, labels[:, 0], weight=weight)


def class_weights(labels: torch.Tensor, task: str, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights of a training split: every class present carries the same total weight and
    the mean weight per image is 1, so the learning rate keeps its meaning (multi-label: the ratio of
    negatives to positives of each finding, BCE's pos_weight). A class absent from the split gets 1."""
    if task == MULTI_LABEL:
        positives = labels.float().sum(0)
        ratio = (len(labels) - positives) / positives.clamp_min(1)
        return torch.where(positives > 0, ratio, torch.ones_like(positives))
    counts = torch.bincount(labels[:, 0], minlength=num_classes).float()
    present = counts > 0
    weights = torch.ones(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights


def learning_rate_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """The schedule's multiplier of cfg.lr at optimizer step `step` (0-based) of `total`."""
    if cfg.schedule == "constant":
        return 1.0
    warm = int(cfg.warmup * total)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def auxiliary_loss(model: nn.Module) -> torch.Tensor | None:
    """A term the model's last training forward computed beside its logits (a cross-modal site's anchors),
    taken once; None for models without one."""
    take = getattr(model, "take_auxiliary_loss", None)
    return take() if take is not None else None


class PlainSteps:
    """Shuffled batches and AdamW steps: ordinary local training."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], cfg: TrainConfig) -> None:
        self.model, self.cfg = model, cfg
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.steps = 0

    def batches(self, num_train: int) -> list[torch.Tensor]:
        return list(torch.randperm(num_train, generator=self.generator).split(self.cfg.batch_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def step(self, loss: torch.Tensor) -> None:
        extra = auxiliary_loss(self.model)
        if extra is not None:
            loss = loss + extra
        if self.cfg.orth_weight > 0:
            loss = loss + self.cfg.orth_weight * orthogonality_penalty(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1

    def empty_step(self) -> None:
        raise AssertionError("a shuffled split has no empty batch")

    def close(self) -> None:
        pass


# Makes the steps of one local training: PlainSteps, or DP-SGD steps (fl_medlego.privacy.PrivateSteps).
StepsFactory = Callable[[nn.Module, list[nn.Parameter], TrainConfig], PlainSteps]


@dataclass
class StepPlan:
    """What every step of one local training shares: device and autocast dtype, loss weights,
    augmentation and its generator, and the schedule's length."""

    device: torch.device
    dtype: torch.dtype
    weight: torch.Tensor | None
    augment: AugmentConfig | None
    generator: torch.Generator
    total_steps: int

    def weight_for(self, width: int) -> torch.Tensor | None:
        """The class weights for logits of this width: classes the training split never shows (and a
        cross-modal site's negative prompts, which are never targets) weigh 1."""
        if self.weight is None or len(self.weight) >= width:
            return self.weight
        return torch.cat([self.weight, torch.ones(width - len(self.weight), device=self.weight.device)])

    @classmethod
    def for_training(cls, cfg: TrainConfig, train: Split, task: str) -> StepPlan:
        device = resolve_device(cfg.device)
        weight = None
        if cfg.class_balance == "loss":
            num_classes = train.labels.shape[1] if task == MULTI_LABEL else int(train.labels.max()) + 1
            weight = class_weights(train.labels, task, max(num_classes, 2)).to(device)
        augment = None
        if cfg.augment == "light":
            augment = LIGHT_AUGMENT if cfg.flips else dataclasses.replace(LIGHT_AUGMENT, flip=False)
        return cls(device, resolve_precision(cfg.precision, device), weight, augment,
                   torch.Generator().manual_seed(cfg.seed + 7919),  # augmentation draws: seeded, on the CPU
                   cfg.epochs * math.ceil(len(train) / cfg.batch_size))


def gather_rows(images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """images[rows] for a batch: numpy's gather on the CPU, where torch's advanced indexing of uint8 rows ran 2.6
    to 36 times slower (pytorch/pytorch#29973; benchmarks.decode), enough to matter for a fast GPU reading a
    memory-mapped cache of a hospital's own images. The same rows, in the same order."""
    if images.device.type != "cpu":
        return images[rows]
    return torch.from_numpy(images.numpy()[rows.numpy()])


def train_epoch(stepper: PlainSteps, train: Split, task: str, image_size: int, cfg: TrainConfig, plan: StepPlan,
                desc: str = "") -> tuple[float, int]:
    """One pass over the shuffled training split, the model already on plan.device: (sum of the task loss
    over the images, images seen)."""
    total, seen = 0.0, 0
    for batch in tqdm(stepper.batches(len(train)), desc=desc, disable=not cfg.progress, leave=False):
        if len(batch) == 0:  # Poisson sampling may draw no image: DP-SGD still takes its (noise) step
            stepper.empty_step()
            continue
        images = to_model_input(to_device(gather_rows(train.images, batch), plan.device), image_size)
        if plan.augment is not None:
            images = augment_floats((images + 1) / 2, image_size, plan.augment, plan.generator)
        with autocast(plan.device, plan.dtype):
            logits = stepper.forward(images)
        loss = task_loss(logits.float(), to_device(train.labels[batch], plan.device), task,
                         plan.weight_for(logits.shape[1]))
        for group in stepper.optimizer.param_groups:
            group["lr"] = cfg.lr * learning_rate_factor(stepper.steps, plan.total_steps, cfg)
        total += loss.item() * len(batch)  # the task loss; the regulariser is not a quality measure
        seen += len(batch)
        stepper.step(loss)
    return total, seen


def fit(model: nn.Module, train: Split, val: Split, task: str, image_size: int, cfg: TrainConfig,
        watch: Split | None = None, on_epoch: Callable[[EpochReport], None] | None = None,
        steps: StepsFactory = PlainSteps, draws_seed: int | None = None, name: str = "") -> FitResult:
    """Train the trainable parameters (adapter + head); keep the epoch with the best validation ACC.

    `watch`, if given, is evaluated after every epoch for learning curves only: it never picks the epoch.
    `on_epoch`, if given, is called after every epoch (progress for people; it cannot change training).
    `steps` makes the batches and optimizer steps (DP-SGD passes its own); `FitResult.steps` counts them.
    `draws_seed` seeds whatever draws from the process's generators meanwhile (a tower's dropout): a site
    passes seeds.training_seed(run seed, site, round); None uses cfg.seed. The caller's generators are left
    as they were. Shuffling and augmentation keep their own generators, seeded from cfg.seed.
    `name` names the progress bars (the site, where the caller knows it: bars of sites trained side by side).
    """
    plan = StepPlan.for_training(cfg, train, task)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    draws = global_draws_from(cfg.seed if draws_seed is None else draws_seed, plan.device)
    with draws, placed(model, plan.device):  # the optimizer is made after the move: its state lives on the device
        stepper = steps(model, params, cfg)
        best_acc, best_epoch, best_state, history = -1.0, 0, None, []
        try:
            for epoch in range(1, cfg.epochs + 1):
                started = time.perf_counter()
                model.train()
                total, seen = train_epoch(stepper, train, task, image_size, cfg, plan,
                                          f"{name + ': ' if name else ''}epoch {epoch}/{cfg.epochs}")
                evaluation = {"device": plan.device, "precision": cfg.precision}
                metrics = evaluate(model, val, task, image_size, cfg.batch_size * 4, **evaluation)
                val_metrics = {f"val_{k}": v for k, v in metrics.items()}
                if watch is not None:
                    val_metrics["watch_acc"] = evaluate(model, watch, task, image_size, cfg.batch_size * 4,
                                                        **evaluation)["acc"]
                train_loss = total / max(seen, 1)
                history.append({"epoch": epoch, "train_loss": train_loss, **val_metrics})
                log.info("epoch %d/%d: train loss %.4f, val acc %.4f", epoch, cfg.epochs, train_loss, metrics["acc"])
                if on_epoch is not None:
                    on_epoch(EpochReport(epoch, cfg.epochs, train_loss, metrics["acc"], time.perf_counter() - started))
                if metrics["acc"] > best_acc:
                    best_acc, best_epoch, best_state = metrics["acc"], epoch, _trainable_state(model)
        finally:
            stepper.close()
        model.load_state_dict(best_state, strict=False)
    return FitResult(best_acc, best_epoch, len(train), history, stepper.steps)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, task: str, image_size: int, batch_size: int = 256,
             device: torch.device | str = "auto", precision: str = "auto") -> dict[str, float]:
    """ACC / AUC (MedMNIST's definitions), macro-F1 and mean loss on a split, on `device` (fl_medlego.device)."""
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = resolve_precision(precision, device)
    scores, loss_sum = [], 0.0
    with placed(model, device):
        model.eval()
        for start in range(0, len(split), batch_size):
            images, labels = split.images[start:start + batch_size], split.labels[start:start + batch_size]
            with autocast(device, dtype):
                logits = model(to_model_input(to_device(images, device), image_size))
            logits = logits.float().cpu()
            loss_sum += task_loss(logits, labels, task).item() * len(labels)
            scores.append(torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=1))
    probabilities = torch.cat(scores).numpy().astype(np.float64)
    return classification_metrics(split.labels.numpy(), probabilities, task, loss_sum / len(split))
