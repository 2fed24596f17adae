"""Rebuild the small MedMNIST subset shipped in fl_medlego/data/sample from full MedMNIST files.

    python scripts/make_bundled_sample.py /path/to/medmnist-root

Keeps at most 600 train / 150 val / 300 test images of each set, chosen by a fixed seed, in
medmnist's own npz layout, so the folder is a medmnist root like any other.
"""

import sys
from pathlib import Path

import numpy as np

SETS = ("bloodmnist", "breastmnist", "organamnist", "pneumoniamnist")
CAPS = {"train": 600, "val": 150, "test": 300}
OUT = Path(__file__).resolve().parents[1] / "fl_medlego" / "data" / "sample"


def main(root: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2025)
    for flag in SETS:
        full = np.load(Path(root) / f"{flag}.npz")
        arrays = {}
        for split, cap in CAPS.items():
            images, labels = full[f"{split}_images"], full[f"{split}_labels"]
            keep = np.sort(rng.choice(len(images), size=min(cap, len(images)), replace=False))
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[keep], labels[keep]
        np.savez_compressed(OUT / f"{flag}.npz", **arrays)
        print(flag, {k: v.shape for k, v in arrays.items() if k.endswith("images")})


if __name__ == "__main__":
    main(sys.argv[1])
