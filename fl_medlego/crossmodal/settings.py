"""Settings of the cross-modal kind (run config `cross-modal.*`)."""

from __future__ import annotations

from dataclasses import dataclass

NEGATIVES = ("vocabulary", "none")


@dataclass(frozen=True)
class CrossModalSettings:
    """How a cross-modal site adapts and scores.

    text_targets: the text tower's matrices that get SVD-LoRA (MiniLM's separate query and value maps,
        the text side of the image tower's Q/V). The adapter's rank and alpha are lora.rank / lora.alpha
        for both towers: one scale alpha / rank covers every matrix of the adapter.
    text_init_std: N(0, std^2) init of the text tower's B and A; 1/sqrt(384) for width 384 (the image
        tower's lora.init-std, 0.09 ~ 1/sqrt(128), is for width 128).
    logit_scale: the fixed inverse temperature of the cosine similarities (not trained: it would be one
        more tensor to merge, and a per-site temperature does not survive a merge).
    negatives: "vocabulary" also scores each training image against every other supported modality's
        class prompts (public label names), so that training separates modalities; "none" ranks only
        the site's own prompts (then nothing tells a blood smear from a chest x-ray).
    """

    text_targets: tuple[str, ...] = ("attention.self.query", "attention.self.value")
    text_init_std: float = 0.05
    logit_scale: float = 30.0
    negatives: str = NEGATIVES[0]

    def __post_init__(self) -> None:
        if not self.text_targets:
            raise ValueError("cross-modal.text-targets is empty: name at least one text-tower module")
        if self.text_init_std <= 0 or self.logit_scale <= 0:
            raise ValueError(f"cross-modal.text-init-std and cross-modal.logit-scale must be > 0, got "
                             f"{self.text_init_std} and {self.logit_scale}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"cross-modal.negatives must be one of {NEGATIVES}, got {self.negatives!r}")
