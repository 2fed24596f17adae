"""A hospital's own images: the first pass that decodes them into the node cache, and reading that cache as
training does, against the images/s a site's training consumes.

    python -m benchmarks.decode                  # 2000 grey 256 px images; training rate of the default preset
    python -m benchmarks.decode --with-224       # also ViT-B/16 training at 224 px on the CPU (a few minutes more)
    python -m benchmarks.decode --images 500 --rgb --workdir /data/scratch

A synthetic dataset (smooth shapes plus noise, so PNG compresses as a scan does rather than as white noise)
is written twice in a temporary folder, as PNG and as DICOM files through the exports' own writers
(`fl_medlego.data.own.export.write_png` / `write_dicom`), each with a manifest (path, label, split), and
listed in memory with `build_record` (no registry on disk).

- First pass: `build_cache(record, size, target, processes)` for each format, size (28, 224: the sources are
  bigger, so every image is resized) and process count (1, 2; the pool's start-up counts). The source files
  are dropped from the OS page cache before each case (fsync, then posix_fadvise DONTNEED: no root needed).
- Cached read: `open_cache`, the train rows as one tensor (`torch.from_numpy`, as `load_own_site` does), and
  one epoch of shuffled batches `images[batch]` (the training loop's indexing, batch size of that size's
  preset). *cold*: the cache file dropped from the page cache first; *warm*: epochs repeated once it is
  resident (what every epoch after a site's first one reads).
- Training: `benchmarks.throughput.measure` (one local epoch of the adapter kind's loop) for the default
  preset at 28 px and, with --with-224, ViT-B/16 at 224 px; without it the 224 px rate is the CPU row of
  results/throughput.csv when there is one (its source says so).

The target (issue 29): the cache is read at least 10x faster than training consumes images. Writes
results/decode.csv and prints the two tables.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from benchmarks.throughput import CASES, RESULTS, measure
from fl_medlego.data.own.cache import build_cache, open_cache
from fl_medlego.data.own.export import write_dicom, write_png
from fl_medlego.data.own.registry import DatasetRecord, build_record
from fl_medlego.files import atomic_path

FORMATS = {"png": (".png", write_png), "dicom": (".dcm", write_dicom)}
TARGET = 10.0  # cached images/s over training images/s
CLASSES = ("benign", "malignant", "normal")
FIELDS = ["case", "format", "size", "processes", "page_cache", "read", "images", "seconds", "images_per_s",
          "training_images_per_s", "training_source", "ratio", "target", "passed"]


def synthetic_image(rng: np.random.Generator, side: int, channels: int) -> np.ndarray:
    """uint8 (side, side) or (side, side, 3): a smooth background, a few bright blobs and mild noise."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    image = 90 + 40 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y) + rng.uniform(0, 6))
    for _ in range(3):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.12)
        image += 80 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    if channels == 3:
        image = image[..., None] * np.array([1.0, 0.85, 0.7], dtype=np.float32)
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_dataset(folder: Path, fmt: str, images: int, side: int, channels: int = 1, seed: int = 0) -> Path:
    """`images` files of format `fmt` under folder/images and folder/manifest.csv (70/10/20 split by row);
    returns the manifest. The same seed gives the same pixels in either format."""
    suffix, write = FORMATS[fmt]
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(images):
        relative = f"images/{i:06d}{suffix}"
        write(folder / relative, synthetic_image(rng, side, channels))
        split = "train" if i % 10 < 7 else "val" if i % 10 == 7 else "test"
        rows.append((relative, CLASSES[i % len(CLASSES)], split))
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return manifest


def drop_page_cache(paths: Iterable[Path]) -> None:
    """Evict the files' pages from the OS page cache (Linux, no root): written back first, then DONTNEED.
    A virtual machine's host may still hold them, so a 'cold' read is cold for this system only."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_bytes(path: Path) -> int | None:
    """Bytes of the file in the page cache (util-linux `fincore`), or None where it cannot be told."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None


def first_pass(record: DatasetRecord, size: int, processes: int, target: Path) -> dict:
    """Time one first pass (every file decoded into a new cache at `target`) from a cold page cache."""
    drop_page_cache(Path(record.root) / f.path for f in record.files)
    started = time.perf_counter()
    build_cache(record, size, target, processes=processes)
    seconds = time.perf_counter() - started
    return {"case": "first pass", "size": size, "processes": processes, "page_cache": "dropped",
            "images": len(record.files), "seconds": round(seconds, 4),
            "images_per_s": round(len(record.files) / seconds, 1)}


def read_epoch(folder: Path, batch_size: int, seed: int = 0, gather: str = "torch") -> tuple[int, float]:
    """One shuffled epoch over the cache's train rows: (images, seconds). gather "torch" is the training loop's
    `split.images[batch]` on the tensor `load_own_site` makes; "numpy" gathers the batch with numpy instead."""
    started = time.perf_counter()
    cached = open_cache(folder)
    rows = cached.images[cached.slices["train"]]
    train = torch.from_numpy(rows)
    seen = 0
    for batch in torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).split(batch_size):
        # a gather: the batch's pages are read (from disk when they are not resident)
        images = train[batch] if gather == "torch" else torch.from_numpy(rows[batch.numpy()])
        seen += len(images)
    return seen, time.perf_counter() - started


def cached_read(folder: Path, size: int, batch_size: int, min_seconds: float = 1.0) -> list[dict]:
    """A cold epoch (the cache dropped from the page cache first), then warm epochs for `min_seconds`, read as
    training reads, and warm epochs gathered with numpy (for comparison: not what training does). The page
    cache column says how much of the train rows' bytes were resident before the timed read."""
    images = folder / "images.npy"
    cached = open_cache(folder)
    train_bytes = cached.images[cached.slices["train"]].nbytes
    del cached
    drop_page_cache([images])
    rows = [{"page_cache": f"cold ({_resident(images, train_bytes)})", "read": "torch index (training's)",
             **_rate(*read_epoch(folder, batch_size))}]
    for gather, read in (("torch", "torch index (training's)"), ("numpy", "numpy gather")):
        resident, seen, seconds, epoch = _resident(images, train_bytes), 0, 0.0, 1
        while seconds < min_seconds:
            n, s = read_epoch(folder, batch_size, seed=epoch, gather=gather)
            seen, seconds, epoch = seen + n, seconds + s, epoch + 1
        rows.append({"page_cache": f"warm ({resident})", "read": read, **_rate(seen, seconds)})
    return [{"case": "cached read", "size": size, "processes": 1, **row} for row in rows]


def _rate(images: int, seconds: float) -> dict:
    return {"images": images, "seconds": round(seconds, 4), "images_per_s": round(images / seconds, 1)}


def _resident(path: Path, train_bytes: int) -> str:
    """The share of the train rows' bytes in the page cache (the file's resident bytes, over the train rows)."""
    count = resident_bytes(path)
    return "resident: ?" if count is None else f"{min(100.0, 100 * count / max(train_bytes, 1)):.0f}% resident"


def training_rates(sizes: Iterable[int], with_224: bool, cpu_images: int | None) -> dict[int, tuple[float, str]]:
    """Training images/s per input size: measured by benchmarks.throughput (28 px always, 224 px with
    `with_224`), else its CSV's CPU row. Sizes without a preset have none."""
    rates: dict[int, tuple[float, str]] = {}
    for model, size, batch, cpu_default, _ in CASES:
        if size not in sizes:
            continue
        if size == 28 or with_224:
            row = measure(model, size, batch, cpu_images or cpu_default, "cpu")
            rates[size] = (row["images_per_s"], f"{model}, cpu, threads={row['threads']} (measured)")
        elif (recorded := _recorded(model)) is not None:
            rates[size] = recorded
    return rates


def _recorded(model: str) -> tuple[float, str] | None:
    path = RESULTS / "throughput.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["model"] == model and row["device"] == "cpu":
                return float(row["images_per_s"]), f"{model}, cpu, threads={row['threads']} (results/throughput.csv)"
    return None


def judge(rows: list[dict], rates: dict[int, tuple[float, str]]) -> None:
    """Add each row's training rate and ratio; cached reads also get the target and pass / fail."""
    for row in rows:
        rate, source = rates.get(row["size"], (None, ""))
        row["training_images_per_s"], row["training_source"] = rate, source
        row["ratio"] = round(row["images_per_s"] / rate, 1) if rate else None
        if row["case"] == "cached read":
            row["target"] = TARGET
            row["passed"] = None if rate is None else row["images_per_s"] / rate >= TARGET


def batch_size_for(size: int) -> int:
    """The batch size of the preset trained at `size` (64 when none is)."""
    return next((batch for _, s, batch, _, _ in CASES if s == size), 64)


def tables(rows: list[dict]) -> str:
    passes = [r for r in rows if r["case"] == "first pass"]
    reads = [r for r in rows if r["case"] == "cached read"]
    lines = ["| format | size | processes | images | seconds | images/s | / training images/s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['size']} px | {r['processes']} | {r['images']} | {r['seconds']} | "
              f"{r['images_per_s']} | {_x(r['ratio'])} |" for r in passes]
    lines += ["", "| cache | size | page cache | read | images | seconds | images/s | training images/s | ratio | "
              f"target >= {TARGET:g} |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['size']} px | {r['page_cache']} | {r['read']} | {r['images']} | {r['seconds']} | "
              f"{r['images_per_s']} | {r['training_images_per_s'] or '-'} | {_x(r['ratio'])} | "
              f"{'-' if r['passed'] is None else 'pass' if r['passed'] else 'FAIL'} |" for r in reads]
    sources = dict.fromkeys(r["training_source"] for r in rows if r["training_source"])
    lines += ["", *(f"training: {s}" for s in sources)]
    return "\n".join(lines)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:g}x"


def write_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in FIELDS} for row in rows)
    return path


def run(workdir: Path, images: int, side: int, channels: int, sizes: list[int], processes: list[int]) -> list[dict]:
    """Every first pass and cached read in `workdir` (which must be empty): the rows without training rates."""
    rows = []
    for fmt in FORMATS:
        manifest = write_dataset(workdir / fmt, fmt, images, side, channels)
        record, _ = build_record(f"bench-{fmt}", "manifest", manifest)
        for size in sizes:
            for p in processes:
                target = workdir / "cache" / f"{fmt}-{size}px-{p}p"
                target.parent.mkdir(exist_ok=True)
                rows.append({"format": fmt, **first_pass(record, size, p, target)})
                print(rows[-1], flush=True)
    for size in sizes:  # every case's cache holds the same pixels: read the PNG one-process one
        for row in cached_read(workdir / "cache" / f"png-{size}px-{processes[0]}p", size, batch_size_for(size)):
            rows.append({"format": "png", **row})
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the synthetic dataset")
    parser.add_argument("--source-size", type=int, default=256, help="side of the source images (px)")
    parser.add_argument("--rgb", action="store_true", help="colour source images (default: grey)")
    parser.add_argument("--sizes", default="28,224", help="comma-separated cache sizes (px)")
    parser.add_argument("--processes", default="1,2", help="comma-separated first-pass process counts")
    parser.add_argument("--with-224", action="store_true", help="measure ViT-B/16 training at 224 px on the CPU")
    parser.add_argument("--train-images", type=int, help="override the timed training epoch's size")
    parser.add_argument("--workdir", help="where the dataset and caches are written (default: a temporary folder)")
    parser.add_argument("--output", default=str(RESULTS / "decode.csv"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    processes = [int(p) for p in args.processes.split(",")]
    with tempfile.TemporaryDirectory(prefix="fl-medlego-decode-", dir=args.workdir) as tmp:
        rows = run(Path(tmp), args.images, args.source_size, 3 if args.rgb else 1, sizes, processes)
    judge(rows, training_rates(sizes, args.with_224, args.train_images))
    write_csv(rows, Path(args.output))
    print(tables(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
