"""A CLIP-style pair for one site: image tower -> fixed projection -> 384-d space <- text tower.

Classes are text prompts, so there is no head: the logits of an image are the scaled cosine
similarities of its embedding to the embeddings of the site's class prompts (CLIP-LoRA), and for a
multi-label set the scaled difference of its similarities to each finding's prompt and its negation
(a two-way softmax is a sigmoid of that difference: CT-CLIP's zero-shot score). Because the logits
look like a head's, local training and evaluation are the project's usual `fit` and `evaluate`.

Both towers and the projection carry SVD-LoRA and nothing else trains. The projection is a fixed
random map drawn from the run's seed (the towers have widths 128 and 384): every site builds the
same one, so only its low-rank update is local, and it travels and merges like any other matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..train import to_model_input
from .anchors import Anchors
from .text_tower import TEXT_WIDTH, sentence_embeddings, tokenize

PROJECTION = "projection"  # the module name of the fixed projection; its adapter matrix is `projection.map`


class FixedProjection(nn.Module):
    """A frozen d_in -> 384 map with orthonormal columns, the same at every site for the same seed.

    seed None leaves the weights as they are (the update template builds it on the meta device).
    """

    def __init__(self, d_in: int, seed: int | None) -> None:
        super().__init__()
        if seed is None:
            self.map = nn.Linear(d_in, TEXT_WIDTH, bias=False)
        else:  # no default init: it would draw from the process's generator, only to be overwritten
            self.map = nn.utils.skip_init(nn.Linear, d_in, TEXT_WIDTH, bias=False)
            generator = torch.Generator().manual_seed(seed)
            q, _ = torch.linalg.qr(torch.randn(TEXT_WIDTH, d_in, generator=generator))
            with torch.no_grad():
                self.map.weight.copy_(q)
        self.map.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(x)


class CrossModalModel(nn.Module):
    """Image tower + projection + text tower, scoring images against a list of prompts.

    prompts: the site's own (one per class; for multi-label sets the finding / negation pairs);
    negatives: other prompts scored in training only (their logits follow the site's classes, so class
    indices stay the same and a cross-entropy target never points at one);
    anchors: other modalities' public images (anchors.py), scored in training against the same prompts and
    pulled towards their own modality, with weight `anchor_weight`; each step's anchors are drawn from the
    process's generator, which local training seeds from (run seed, site, round) as it does for dropout.
    """

    def __init__(self, image: nn.Module, projection: nn.Module, text: nn.Module, prompts: list[str],
                 logit_scale: float, multi_label: bool = False, negatives: list[str] | None = None,
                 image_size: int = 28, base_fingerprint: str = "", anchors: Anchors | None = None,
                 anchor_weight: float = 1.0, modality_spans: tuple[tuple[int, int], ...] | None = None) -> None:
        super().__init__()
        self.image, self.projection, self.text = image, projection, text
        self.logit_scale, self.multi_label = float(logit_scale), multi_label
        self.image_size, self.base_fingerprint = image_size, base_fingerprint
        self.use_prompts(prompts)
        self._negative_tokens = tokenize(negatives) if negatives else None
        self._negatives: torch.Tensor | None = None
        if anchors is not None and self._negative_tokens is None:
            raise ValueError("anchors are scored against the vocabulary negatives: they need negatives")
        if modality_spans is not None and self._negative_tokens is None:
            raise ValueError("the modality-level term pools the vocabulary negatives: it needs negatives")
        self.anchors, self.anchor_weight, self.modality_spans = anchors, float(anchor_weight), modality_spans
        self._auxiliary: torch.Tensor | None = None

    def use_prompts(self, prompts: list[str]) -> None:
        """Score against these prompts from now on (the union-of-labels and unseen-prompt tests swap them)."""
        if not prompts or (self.multi_label and len(prompts) % 2):
            raise ValueError(f"{len(prompts)} prompts: need at least one (pairs for a multi-label set)")
        self.prompts = list(prompts)
        self._tokens = tokenize(prompts)
        self._cached: torch.Tensor | None = None

    def train(self, mode: bool = True) -> CrossModalModel:
        # A new epoch (train) or an evaluation (eval) starts: text embeddings computed before are stale.
        self._cached, self._negatives, self._auxiliary = None, None, None
        super().train(mode)
        for side in self._frozen_sides():  # a side without adapters is fixed: no dropout, one encoding
            side.eval()
        return self

    def _frozen_sides(self) -> list[nn.Module]:
        return [side for side in (self.image, self.projection, self.text)
                if not any(p.requires_grad for p in side.parameters())]

    def _text_trains(self) -> bool:
        return self.training and any(p.requires_grad for p in self.text.parameters())

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.image(x)), dim=-1)

    def _prompt_embeddings(self) -> torch.Tensor:
        if self._text_trains():  # its prompts are encoded again at every step (a frozen tower's once)
            return sentence_embeddings(self.text, self._tokens)
        if self._cached is None:
            with torch.no_grad():
                self._cached = sentence_embeddings(self.text, self._tokens)
        return self._cached

    def _negative_embeddings(self) -> torch.Tensor:
        # Encoded once per epoch without gradients: the vocabulary is long (84 prompts, about 1 s to encode
        # here), and the site's own prompts, re-encoded every step, are what its text adapter learns from.
        if self._negatives is None:
            with torch.no_grad():
                self._negatives = sentence_embeddings(self.text, self._negative_tokens)
        return self._negatives

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = self.embed_images(x)
        similarity = images @ self._prompt_embeddings().T
        if self.multi_label:  # interleaved (finding, negation) pairs -> one logit per finding
            logits = self.logit_scale * (similarity[:, 0::2] - similarity[:, 1::2])
            return logits
        logits = self.logit_scale * similarity
        if not self.training or self._negative_tokens is None:
            return logits
        scored = torch.cat([logits, self.logit_scale * (images @ self._negative_embeddings().T)], dim=1)
        terms = []
        if self.modality_spans is not None:
            terms.append(_modality_term(scored, self.modality_spans, torch.zeros(len(x), dtype=torch.long,
                                                                                 device=x.device)))
        if self.anchors is not None:
            terms.append(self.anchor_weight * self._anchor_term(len(x), x.device))
        self._auxiliary = sum(terms) if terms else None
        return logits if self.modality_spans is not None else scored

    def _anchor_term(self, count: int, device: torch.device) -> torch.Tensor:
        """Cross-entropy of `count` anchors over modalities, each modality's score the log-sum-exp of its prompts'."""
        rows = torch.randint(len(self.anchors.targets), (count,))
        embedded = self.embed_images(to_model_input(self.anchors.images[rows].to(device), self.image_size))
        prompts = torch.cat([self._prompt_embeddings(), self._negative_embeddings()])
        logits = self.logit_scale * (embedded @ prompts.T)
        return _modality_term(logits, self.anchors.spans, self.anchors.targets[rows].to(device))

    def take_auxiliary_loss(self) -> torch.Tensor | None:
        """The modality and anchor terms of the last training forward, once (the training step adds them to the
        task loss)."""
        loss, self._auxiliary = self._auxiliary, None
        return loss


def _modality_term(logits: torch.Tensor, spans: tuple[tuple[int, int], ...], targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over modalities, each modality's score the log-sum-exp of its prompts' logits (in float32
    under bf16 autocast)."""
    logits = logits.float()
    modality = torch.stack([logits[:, a:b].logsumexp(dim=1) for a, b in spans], dim=1)
    return F.cross_entropy(modality, targets)
