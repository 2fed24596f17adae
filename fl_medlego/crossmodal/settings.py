"""Settings of the cross-modal kind (run config `cross-modal.*`): the kind declares them (`settings_type`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from ..settings import check_group, setting

NEGATIVES = ("vocabulary", "modality", "none")


def _not_blank(value: str) -> None:
    if not value.strip():  # a blank path would read whatever <flag>.npz files the working folder holds
        raise ValueError("give 'bundled', 'none' or a folder of MedMNIST <flag>.npz files")
TOWERS = ("both", "image", "text")
TUNE_ON = ("acc", "union-acc")


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
    towers: which side adapts. "image" (the default): the image tower and the projection, the text tower frozen,
        so every site scores against one shared prompt space; "both" (MedCT-VLM's design); "text": the text
        tower only.
    negatives: "vocabulary" also scores each training image against every other supported modality's
        class prompts (public label names), so that training separates modalities; "modality" keeps the
        site's cross-entropy over its own prompts and adds a modality-level term: the image's scores pooled per
        modality (log-sum-exp over each modality's class prompts, as the anchors are) and cross-entropy towards
        its own, so that telling modalities apart and telling classes apart are separate terms; "none" ranks
        only the site's own prompts (then nothing tells a blood smear from a chest x-ray).
    anchors: "none", "bundled" or a folder of MedMNIST-layout npz files: public images of the other
        modalities that each MedMNIST site also trains on, pulled towards their own modality's prompts
        (anchors.py says why: without them every site claims every image). Needs negatives (vocabulary or
        modality): the anchors are scored against them.
    anchor_weight: the weight of that term beside the site's own cross-entropy.
    tune_on: what `fl-medlego compare` chooses a merge's options on, averaged over the sites' validation
        images: "acc" (each site's own prompts, as for every kind) or "union-acc" (the right class on top among
        the union test's prompts, the run's MedMNIST sets' classes and, for a site with its own images, its own:
        it also sees whether the merge still routes each image to its modality, which own-prompt ACC cannot; a
        multi-label site, which has no union test, scores its own-prompt ACC). Other kinds ignore it.
    """

    PREFIX: ClassVar[str] = "cross-modal."

    text_targets: tuple[str, ...] = setting(("attention.self.query", "attention.self.value"),
                                            "cross-modal sites: the text tower's maps that get SVD-LoRA "
                                            "(MiniLM's query and value)", nonempty=True)
    text_init_std: float = setting(0.05, "cross-modal sites: init std of the text tower's B and A "
                                   "(~1/sqrt(384), its width)", above=0)
    logit_scale: float = setting(30.0, "cross-modal sites: fixed inverse temperature of the image-prompt cosine "
                                 "similarities", above=0)
    towers: str = setting("image", "cross-modal sites: which side gets SVD-LoRA ('image' = image tower and "
                          "projection, text tower frozen; 'text' = text tower only)", choices=TOWERS)
    negatives: str = setting(NEGATIVES[0], "cross-modal sites: other modalities' class prompts as training "
                             "negatives ('modality' = a separate modality-level term, 'none' = off)",
                             choices=NEGATIVES)

    anchors: str = setting("bundled", "cross-modal sites: public images of other modalities trained towards their "
                           "own modality ('bundled', a folder of MedMNIST <flag>.npz files, or 'none')",
                           check=_not_blank)
    anchor_weight: float = setting(1.0, "cross-modal sites: weight of the anchor term beside the site's own loss",
                                   above=0)
    tune_on: str = setting(TUNE_ON[0], "cross-modal sites: what compare chooses merge options on, over the sites' "
                           "validation images ('union-acc' = the right class among the union test's prompts, "
                           "which sees the routing)", choices=TUNE_ON)

    def __post_init__(self) -> None:
        check_group(self)
        if self.anchors != "none" and self.negatives == "none":
            raise ConfigError(f"cross-modal.anchors={self.anchors!r} scores the anchors against the vocabulary "
                             "negatives: set cross-modal.negatives='vocabulary' (or 'modality') or "
                             "cross-modal.anchors='none'")
