"""Configuration of an SVD-LoRA adapter (docs/method.md section 1)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class SVDLoRAConfig:
    """What to adapt and how.

    rank: r, the number of singular triplets per adapted matrix.
    alpha: the update is scaled by s = alpha / rank (true division: MeLo's `alpha // r` zeroes it).
    targets: module-name suffixes to adapt. A fused timm `attn.qkv` gets two adapters, on its Q rows
        and its V rows (K untouched); any other nn.Linear gets one adapter on all its rows.
    init_std: B and A start from N(0, init_std^2); E starts at zero, so the update is zero at step 0.
        0.09 ~ 1/sqrt(128) gives the default width-128 ViT unit-norm columns, where the regulariser
        is already near its minimum.
    orth_weight: weight of ||B^T B - I||_F^2 + ||A A^T - I||_F^2 in the training loss. The paper gives
        no value; AdaLoRA uses 0.5 on the non-squared norm. Measured here (docs/results.md): 0.1 cost
        about 4 ACC points against 0.01 on the bundled sample; 0.01 keeps the factors near-orthogonal.
    """

    rank: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = field(default=("attn.qkv",))
    init_std: float = 0.09
    orth_weight: float = 0.01

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ValueError(f"SVD-LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"SVD-LoRA alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError("SVD-LoRA targets is empty: name at least one module, e.g. 'attn.qkv'")
        if self.init_std <= 0:
            raise ValueError(f"SVD-LoRA init_std must be > 0, got {self.init_std}")
        if self.orth_weight < 0:
            raise ValueError(f"SVD-LoRA orth_weight must be >= 0, got {self.orth_weight}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> SVDLoRAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown SVD-LoRA config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)
