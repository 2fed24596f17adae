"""Write a MedMNIST set as a hospital would hold it: image files (PNG or DICOM) plus a manifest.

The export is the honest test of the own-data path: a site trained from it, with the manifest's split, must
give the metrics of the same site trained from the `.npz` (tests/test_own_equivalence.py). So the export
keeps every pixel (8-bit, lossless), MedMNIST's split and order, and the class order (`classes.txt`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ...errors import UserError
from ...files import atomic_path
from ...metrics import MULTI_LABEL
from ..medmnist_source import SPLITS, _medmnist_info, load_medmnist
from .registry import CLASSES_FILE

FORMATS = ("png", "dicom")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path)  # (H, W): L, (H, W, 3): RGB


def write_dicom(path: Path, image: np.ndarray) -> None:
    """An uncompressed 8-bit secondary-capture DICOM file holding exactly `image` (grey or RGB)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = image.shape[:2]
    ds.SamplesPerPixel = 1 if image.ndim == 2 else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if image.ndim == 2 else "RGB"
    if image.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def export_medmnist(flag: str, folder: Path, fmt: str = "png", data_root: str = "bundled") -> Path:
    """Write `flag`'s three splits under `folder` (created; must not hold anything yet); returns the manifest."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} exists and is not an empty folder: export into a new folder")
    loaded = load_medmnist(flag, data_root)
    labels = _medmnist_info().INFO[loaded.flag]["label"]
    names = [labels[str(i)] for i in range(len(labels))]
    suffix, write = (".png", write_png) if fmt == "png" else (".dcm", write_dicom)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        folder.rmdir()  # empty (checked above): the export appears whole or not at all
    with atomic_path(folder) as tmp:
        rows = []
        for split in SPLITS:
            (tmp / "images" / split).mkdir(parents=True)
            arrays = loaded.splits[split]
            for i, (image, label) in enumerate(zip(arrays.images, arrays.labels)):
                relative = f"images/{split}/{i:06d}{suffix}"
                write(tmp / relative, image)
                rows.append((relative, label, split))
        with open(tmp / "manifest.csv", "w", newline="") as out:
            writer = csv.writer(out)
            if loaded.task == MULTI_LABEL:
                writer.writerow(["path", *names, "split"])
                writer.writerows([path, *(int(v) for v in label), split] for path, label, split in rows)
            else:
                writer.writerow(["path", "label", "split"])
                writer.writerows([path, names[int(label[0])], split] for path, label, split in rows)
        (tmp / CLASSES_FILE).write_text("".join(f"{name}\n" for name in names))
    return folder / "manifest.csv"
