"""Anchors: a few public images of other modalities that a cross-modal site trains on as what they are.

A site sees only its own modality, so the cheapest way to rank its images above every other modality's
prompts is to pull *every* image towards its own prompts. Measured on the bundled sample (4 sites, image
tower adapted): each specialist alone sends 0.99-1.00 of all four modalities' test images to its own
prompts, and a merge of four such pulls is a tug of war that routes two modalities and loses the others.
Anchors give a site images it must not claim: each is scored against the prompts the site trains with
(its own classes and the vocabulary negatives), the scores pooled per modality (log-sum-exp over that
modality's class prompts), and cross-entropy pulls it towards its own modality. Every site learns the same
routing from the same public images, so the merge adds pulls that agree. Class labels are not used.

Sources (`cross-modal.anchors`): "none"; "bundled" (128 MedMNIST training images of blood, breast, organA
and pneumonia shipped in `anchors/`, none a test image); or a folder of MedMNIST-layout `<flag>.npz` files
(`train_images`), e.g. a MedMNIST root, from which 128 images of each set are drawn with a fixed seed.
A site never uses anchors of its own modality (nor of a set of the same modality: organA/C/S, chest and
pneumonia); a site with its own images trains without anchors (its modality is not named, and anchors of
its own modality would teach it to disown its images), and so does a multi-label site (it has no negatives).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.medmnist_source import canonical_flag
from .prompts import class_prompts, supported_flags

NONE, BUNDLED = "none", "bundled"
BUNDLED_FOLDER = Path(__file__).parent / "anchors"
PER_MODALITY = 128  # images drawn from each set of a folder the user names (the bundled files hold 128)
# Sets that show the same modality: a site of one never uses the others' images as anchors (it would learn to
# disown images like its own). organA/C/S are views of the same CT volumes; ChestMNIST and PneumoniaMNIST
# are both chest x-rays.
SAME_MODALITY = ({"organamnist", "organcmnist", "organsmnist"}, {"chestmnist", "pneumoniamnist"})


def own_modality(flag: str) -> set[str]:
    """The sets whose images are of the same modality as `flag`'s, `flag` included."""
    return next((group for group in SAME_MODALITY if flag in group), {flag})


@dataclass(frozen=True)
class Anchors:
    """Other modalities' images and where their modality sits among a site's training logits."""

    images: torch.Tensor  # uint8 (N, H, W, C), as a Split's
    targets: torch.Tensor  # int64 (N,): the index in `spans` of each image's modality
    spans: tuple[tuple[int, int], ...]  # (start, end) of each modality's prompts in the training logits


def _folder(source: str) -> Path:
    folder = BUNDLED_FOLDER if source == BUNDLED else Path(source).expanduser()
    if not folder.is_dir():
        raise ValueError(f"cross-modal.anchors={source!r}: no such folder; use 'bundled', 'none' or a folder of "
                         "MedMNIST-layout <flag>.npz files (train_images)")
    return folder


@functools.lru_cache(maxsize=4)
def _read(folder: Path) -> dict[str, np.ndarray]:
    """flag -> up to PER_MODALITY training images of every supported set found in the folder."""
    found = {}
    for flag in supported_flags():
        file = folder / f"{flag}.npz"
        if not file.is_file():
            continue
        with np.load(file) as arrays:
            if "train_images" not in arrays:
                raise ValueError(f"anchor file {file} has no train_images array (MedMNIST's npz layout)")
            images = arrays["train_images"]
        if len(images) > PER_MODALITY:
            rows = np.random.default_rng(4242).choice(len(images), size=PER_MODALITY, replace=False)
            images = images[np.sort(rows)]
        found[flag] = images if images.ndim == 4 else images[..., None]
    if not found:
        raise ValueError(f"cross-modal.anchors: {folder} holds no <flag>.npz of a supported set "
                         f"({', '.join(supported_flags())})")
    return found


def training_spans(own_flag: str, own_prompts: int) -> dict[str, tuple[int, int]]:
    """Where each modality's prompts sit in a site's training logits: its own prompts first, then the
    vocabulary (prompts.vocabulary: every other supported set, in supported_flags order). A site with its
    own images (own_flag "") has its block under "" and every supported set after it."""
    own = canonical_flag(own_flag) if own_flag else ""
    spans, start = {own: (0, own_prompts)}, own_prompts
    for flag in supported_flags():
        if flag != own:
            spans[flag] = (start, start + len(class_prompts(flag)))
            start = spans[flag][1]
    return spans


def modality_spans(flag: str, own_prompts: int) -> tuple[tuple[int, int], ...]:
    """The modality-level term's spans of [own prompts, vocabulary], the own block first: a set showing the
    site's own modality (organA/C/S; chest and pneumonia x-rays) is left out, not pushed away. A site with
    its own images (flag "") keeps every set."""
    spans = training_spans(flag, own_prompts)
    same = own_modality(canonical_flag(flag)) if flag else set()
    return tuple(span for i, (name, span) in enumerate(spans.items()) if i == 0 or name not in same)


def load_anchors(source: str, own_flag: str, own_prompts: int) -> Anchors | None:
    """The anchors of a MedMNIST site of `own_flag` whose training logits hold `own_prompts` of its own first."""
    if source == NONE or not own_flag:
        return None
    own = canonical_flag(own_flag)
    images = {f: a for f, a in _read(_folder(source)).items() if f not in own_modality(own)}
    if not images:
        return None  # the folder holds this site's own modality only
    spans = training_spans(own, own_prompts)
    order = list(spans)
    if len({a.shape[1:3] for a in images.values()}) > 1:
        sizes = {f: a.shape[1:3] for f, a in images.items()}
        raise ValueError(f"cross-modal.anchors={source!r}: the anchor sets differ in image size ({sizes}); "
                         "use files of one size (28 px: <flag>.npz)")
    channels = max(a.shape[-1] for a in images.values())  # grey next to RGB: repeat the grey channel
    stacked = np.concatenate([np.repeat(a, channels // a.shape[-1], axis=-1) for a in images.values()])
    targets = np.concatenate([np.full(len(a), order.index(f)) for f, a in images.items()])
    return Anchors(torch.from_numpy(stacked), torch.from_numpy(targets).long(), tuple(spans.values()))
