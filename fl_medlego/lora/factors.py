"""The portable form of an SVD-LoRA adapter: per adapted matrix, the factors of D = s * B diag(E) A.

Pure tensor types, shared by the layers (which train them), the merges (which combine them), the
wire format and the safetensors files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FACTOR_SUFFIXES = ("lora_B", "lora_E", "lora_A")


@dataclass(frozen=True)
class Factors:
    """One low-rank update D = B diag(E) A (the scale, if any, is kept by the owner)."""

    B: torch.Tensor  # d_out x r
    E: torch.Tensor  # r
    A: torch.Tensor  # r x d_in

    def __post_init__(self) -> None:
        if self.B.dim() != 2 or self.E.dim() != 1 or self.A.dim() != 2:
            raise ValueError(
                f"factors must be B (d_out x r), E (r,), A (r x d_in); got shapes "
                f"{tuple(self.B.shape)}, {tuple(self.E.shape)}, {tuple(self.A.shape)}"
            )
        r = self.E.shape[0]
        if self.B.shape[1] != r or self.A.shape[0] != r:
            raise ValueError(
                f"factor ranks disagree: B has {self.B.shape[1]} columns, E has {r} entries, "
                f"A has {self.A.shape[0]} rows"
            )

    @property
    def rank(self) -> int:
        return self.E.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.B.shape[0], self.A.shape[1]

    def delta(self) -> torch.Tensor:
        """The dense d_out x d_in update (only for tests, references and small matrices)."""
        return (self.B * self.E) @ self.A

    def scaled(self, factor: float) -> Factors:
        return Factors(self.B, self.E * factor, self.A)


@dataclass
class Adapter:
    """A whole adapter: factors per adapted matrix (stable names such as `blocks.0.attn.qkv.q`).

    `scale` multiplies every update (alpha / rank for a freshly trained adapter, 1.0 for a merged
    one, whose singular values already carry it). `metadata` is free-form JSON (config, provenance).
    """

    factors: dict[str, Factors]
    scale: float = 1.0
    metadata: dict = field(default_factory=dict)

    def folded(self) -> dict[str, Factors]:
        """Factors with the scale folded into E, so that D = B diag(E) A exactly."""
        return {name: f.scaled(self.scale) for name, f in self.factors.items()}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, f in self.factors.items():
            out[f"{name}.lora_B"], out[f"{name}.lora_E"], out[f"{name}.lora_A"] = f.B, f.E, f.A
        return out

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], scale: float = 1.0, metadata: dict | None = None
    ) -> Adapter:
        """Group `name.lora_B/E/A` tensors back into factors; any stray or missing key is an error."""
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            name, _, suffix = key.rpartition(".")
            if suffix not in FACTOR_SUFFIXES or not name:
                raise ValueError(f"unexpected adapter tensor key {key!r}: keys must end in {FACTOR_SUFFIXES}")
            grouped.setdefault(name, {})[suffix] = tensor
        factors = {}
        for name, parts in sorted(grouped.items()):
            missing = [s for s in FACTOR_SUFFIXES if s not in parts]
            if missing:
                raise ValueError(f"adapter matrix {name!r} is missing {missing}")
            factors[name] = Factors(parts["lora_B"], parts["lora_E"], parts["lora_A"])
        return cls(factors, scale=scale, metadata=dict(metadata or {}))
