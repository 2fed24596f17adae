"""SVD-LoRA layers: a frozen nn.Linear plus B diag(E) A updates on chosen row ranges."""

from __future__ import annotations

import torch
from torch import nn

from .factors import Factors


class SVDLoRAUpdate(nn.Module):
    """One trainable update s * B diag(E) A of a d_out x d_in block of a weight.

    E starts at zero, so the update is exactly zero before the first step (docs/method.md section 1).
    """

    def __init__(self, d_out: int, d_in: int, rank: int, scale: float, init_std: float) -> None:
        super().__init__()
        self.scale = float(scale)
        self.lora_B = nn.Parameter(torch.randn(d_out, rank) * init_std)
        self.lora_E = nn.Parameter(torch.zeros(rank))
        self.lora_A = nn.Parameter(torch.randn(rank, d_in) * init_std)

    @property
    def rank(self) -> int:
        return self.lora_E.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x @ self.lora_A.T) * self.lora_E) @ self.lora_B.T * self.scale

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B * self.lora_E) @ self.lora_A * self.scale

    def factors(self) -> Factors:
        return Factors(self.lora_B.detach(), self.lora_E.detach(), self.lora_A.detach())

    def set_factors(self, factors: Factors, scale: float) -> None:
        """Replace the factors (any rank: a merged adapter may have another rank than r)."""
        d_out, d_in = self.lora_B.shape[0], self.lora_A.shape[1]
        if factors.shape != (d_out, d_in):
            raise ValueError(f"factors of shape {factors.shape} do not fit a {d_out} x {d_in} block")
        device, dtype = self.lora_B.device, self.lora_B.dtype
        self.lora_B = nn.Parameter(factors.B.detach().to(device, dtype).clone())
        self.lora_E = nn.Parameter(factors.E.detach().to(device, dtype).clone())
        self.lora_A = nn.Parameter(factors.A.detach().to(device, dtype).clone())
        self.scale = float(scale)

    def orthogonality_penalty(self) -> torch.Tensor:
        """||B^T B - I||_F^2 + ||A A^T - I||_F^2: keeps B and A close to singular vectors."""
        eye = torch.eye(self.rank, device=self.lora_B.device, dtype=self.lora_B.dtype)
        return ((self.lora_B.T @ self.lora_B - eye) ** 2).sum() + ((self.lora_A @ self.lora_A.T - eye) ** 2).sum()


class SVDLoRALinear(nn.Module):
    """A frozen nn.Linear whose output rows [start, stop) of each part get their own update.

    A plain target has one part covering every row (named ""); timm's fused qkv has parts "q" and "v".
    """

    def __init__(self, base: nn.Linear, parts: dict[str, tuple[int, int]], rank: int, scale: float, init_std: float):
        super().__init__()
        self.base = base
        self.parts = dict(sorted(parts.items(), key=lambda item: item[1][0]))
        self.updates = nn.ModuleDict(
            {
                _module_key(name): SVDLoRAUpdate(stop - start, base.in_features, rank, scale, init_std)
                for name, (start, stop) in self.parts.items()
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        pieces, cursor = [], 0
        for name, (start, stop) in self.parts.items():
            if start > cursor:
                pieces.append(out[..., cursor:start])
            pieces.append(out[..., start:stop] + self.updates[_module_key(name)](x))
            cursor = stop
        if cursor < out.shape[-1]:
            pieces.append(out[..., cursor:])
        return torch.cat(pieces, dim=-1)

    def named_updates(self) -> dict[str, SVDLoRAUpdate]:
        """Part name ("" for a whole-matrix part) -> its update."""
        return {name: self.updates[_module_key(name)] for name in self.parts}


def _module_key(part: str) -> str:
    # nn.ModuleDict refuses an empty key.
    return part or "all"
