"""Rebuild the public anchor images shipped in fl_medlego/crossmodal/anchors from full MedMNIST files.

    python scripts/make_anchor_sample.py /path/to/medmnist-root

Keeps 128 training images of each set, none of them in the bundled sample (fl_medlego/data/sample, whose
draw this script repeats to leave its images out) where the set has that many others: BreastMNIST has 546
training images, all in the sample, so its anchors are 128 of them. Test images are never used. In
medmnist's npz layout (`train_images`,
`train_labels` only). Cross-modal sites train with them as other modalities' images
(`cross-modal.anchors`, docs/cross-modal.md).
"""

import sys
from pathlib import Path

import numpy as np

SETS = ("bloodmnist", "breastmnist", "organamnist", "pneumoniamnist")
SAMPLE_CAPS = {"train": 600, "val": 150, "test": 300}  # scripts/make_bundled_sample.py's draw, repeated
PER_SET = 128
OUT = Path(__file__).resolve().parents[1] / "fl_medlego" / "crossmodal" / "anchors"


def bundled_train_rows(root: Path) -> dict[str, np.ndarray]:
    """The training rows the bundled sample kept, drawn as make_bundled_sample.py draws them."""
    rng, kept = np.random.default_rng(2025), {}
    for flag in SETS:
        full = np.load(root / f"{flag}.npz")
        for split, cap in SAMPLE_CAPS.items():
            n = len(full[f"{split}_labels"])
            keep = np.sort(rng.choice(n, size=min(cap, n), replace=False))
            if split == "train":
                kept[flag] = keep
    return kept


def main(root: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    in_sample = bundled_train_rows(Path(root))
    rng = np.random.default_rng(4242)
    for flag in SETS:
        full = np.load(Path(root) / f"{flag}.npz")
        images, labels = full["train_images"], full["train_labels"]
        free = np.setdiff1d(np.arange(len(images)), in_sample[flag])
        if len(free) < PER_SET:  # breastmnist: every training image is in the sample
            free = np.arange(len(images))
        keep = np.sort(rng.choice(free, size=PER_SET, replace=False))
        np.savez_compressed(OUT / f"{flag}.npz", train_images=images[keep], train_labels=labels[keep])
        print(flag, images[keep].shape)


if __name__ == "__main__":
    main(sys.argv[1])
