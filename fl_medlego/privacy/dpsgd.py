"""DP-SGD steps for `fl_medlego.train.fit`, with Opacus: Poisson-sampled batches, per-example clipping of
every trainable parameter's gradient (adapter factors and head together), Gaussian noise.

The sampling and the noise draw from a generator seeded by the operating system, never from the run's
seed: the run config is shared with the coordinator, which could otherwise replay both and undo the
noise. They are generators of their own, so fit's seeding of the process's generators (from the run
seed, site and round) does not reach them. A private run is therefore not bit-reproducible. The
adapter's orthogonality regulariser does not depend on any image, so its gradient is added after the
noise, at no privacy cost.
"""

from __future__ import annotations

import secrets
import warnings

import torch
from torch import nn

from ..lora import orthogonality_penalty
from ..train import TrainConfig, auxiliary_loss
from .accountant import PrivacyLedger
from .settings import PrivacySettings


class PrivateSteps:
    """The batches and optimizer steps of one DP-SGD training (same interface as train.PlainSteps)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], cfg: TrainConfig,
                 settings: PrivacySettings, ledger: PrivacyLedger, num_train: int) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        from . import grad_sampler  # noqa: F401  registers the SVD-LoRA per-example gradients

        self.model, self.cfg, self.params = model, cfg, params
        self.sample_rate, self.epoch_steps = ledger.sample_rate, ledger.epoch_steps
        self.wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        self.generator = torch.Generator().manual_seed(secrets.randbits(63))  # Poisson sampling, on the CPU
        # Opacus draws the noise on the parameters' device, so its generator must live there too.
        noise = torch.Generator(device=params[0].device).manual_seed(secrets.randbits(63))
        self.expected_batch = max(1, round(num_train * self.sample_rate))  # what the summed gradient is divided by
        self.optimizer = DPOptimizer(
            torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
            noise_multiplier=ledger.noise_multiplier, max_grad_norm=settings.max_grad_norm,
            expected_batch_size=self.expected_batch, loss_reduction="mean", generator=noise)
        self.steps = 0

    def batches(self, num_train: int) -> list[torch.Tensor]:
        """One epoch: 1 / sample_rate steps, each image in each batch independently with the sampling rate."""
        return [torch.nonzero(torch.rand(num_train, generator=self.generator) < self.sample_rate)[:, 0]
                for _ in range(self.epoch_steps)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.wrapped(images)

    def step(self, loss: torch.Tensor) -> None:
        if auxiliary_loss(self.model) is not None:  # per-example clipping would not bound it: never train so
            raise ValueError("DP-SGD cannot train a model with an auxiliary loss (cross-modal anchors)")
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the images need no gradient: Opacus's hooks only read the layers'
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        self._private_step()

    def empty_step(self) -> None:
        """No image drawn: the step is noise alone (the accountant counts it like any other)."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self._private_step()

    def _private_step(self) -> None:
        if self.optimizer.pre_step():  # clipped, summed, noised: p.grad is now the private gradient
            if self.cfg.orth_weight > 0:
                penalty = self.cfg.orth_weight * orthogonality_penalty(self.model)
                for p, g in zip(self.params, torch.autograd.grad(penalty, self.params, allow_unused=True)):
                    if g is not None:
                        p.grad.add_(g)
            self.optimizer.original_optimizer.step()
        self.steps += 1

    def close(self) -> None:
        self.wrapped._close()  # removes Opacus's hooks and per-example buffers from the model


def private_steps(settings: PrivacySettings, ledger: PrivacyLedger, num_train: int):
    """A `steps` factory for train.fit that trains with DP-SGD under `ledger`'s noise."""
    def make(model: nn.Module, params: list[nn.Parameter], cfg: TrainConfig) -> PrivateSteps:
        return PrivateSteps(model, params, cfg, settings, ledger, num_train)
    return make
