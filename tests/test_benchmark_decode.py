"""The own-data decode benchmark (benchmarks/decode.py) on a tiny dataset: what it times is what it says."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks import decode as bench
from fl_medlego.data.own.cache import open_cache
from fl_medlego.data.own.decode import decode_image
from fl_medlego.data.own.registry import build_record


def _evictable(folder) -> bool:
    """Whether this test can see pages leave the page cache: fincore present, and no RAM-backed file system."""
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(folder)], capture_output=True, text=True).stdout.strip()
    return bench.resident_bytes(Path(__file__)) is not None and fs not in ("tmpfs", "ramfs", "overlayfs")


def _record(tmp_path, fmt, images=10, side=40, channels=1):
    manifest = bench.write_dataset(tmp_path / fmt, fmt, images, side, channels)
    record, _ = build_record(f"bench-{fmt}", "manifest", manifest)
    return record


@pytest.mark.parametrize("channels", [1, 3])
def test_png_and_dicom_first_passes_give_the_same_cache_of_the_written_images(tmp_path, channels):
    png, dicom = _record(tmp_path, "png", channels=channels), _record(tmp_path, "dicom", channels=channels)
    assert png.channels == dicom.channels == channels
    assert [f.split for f in png.files].count("train") == 7 and {f.split for f in png.files} == {"train", "val", "test"}
    rows = [bench.first_pass(png, 16, 1, tmp_path / "png-16"), bench.first_pass(dicom, 16, 2, tmp_path / "dcm-16")]
    for row in rows:
        assert row["images"] == 10 and row["seconds"] > 0
        assert row["images_per_s"] == pytest.approx(10 / row["seconds"], rel=0.01)
    a, b = open_cache(tmp_path / "png-16"), open_cache(tmp_path / "dcm-16")
    assert a.images.shape == (10, 16, 16, channels)
    np.testing.assert_array_equal(a.images, b.images)  # lossless 8-bit in both formats, same seed
    first = next(f for f in png.files if f.split == "train")
    np.testing.assert_array_equal(a.images[0], decode_image(tmp_path / "png" / first.path, 16, channels))
    assert a.images.std() > 5  # not a constant image: the resize and the formats have something to keep


def test_a_cached_epoch_reads_every_train_row_in_both_gathers(tmp_path):
    record = _record(tmp_path, "png", images=20)
    bench.first_pass(record, 8, 1, tmp_path / "cache")
    for gather in ("torch", "numpy"):
        seen, seconds = bench.read_epoch(tmp_path / "cache", batch_size=3, gather=gather)
        assert seen == 14 and seconds > 0
    rows = bench.cached_read(tmp_path / "cache", 8, batch_size=3, min_seconds=0.05)
    assert [r["page_cache"].split()[0] for r in rows] == ["cold", "warm", "warm"]
    assert [r["read"] for r in rows] == ["torch index (training's)", "torch index (training's)", "numpy gather"]
    if _evictable(tmp_path):
        assert rows[0]["page_cache"] == "cold (0% resident)"
        assert rows[1]["page_cache"] == rows[2]["page_cache"] == "warm (100% resident)"
    assert rows[0]["images"] == 14 and all(r["images"] % 14 == 0 and r["images_per_s"] > 0 for r in rows)
    assert all(r["seconds"] >= 0.05 for r in rows[1:])


def test_drop_page_cache_evicts_the_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 4 << 20, dtype=np.uint8).tobytes())
    if not _evictable(tmp_path):
        pytest.skip("no fincore, or a file system whose pages cannot be evicted")
    path.read_bytes()
    assert bench.resident_bytes(path) > 0
    bench.drop_page_cache([path])
    assert bench.resident_bytes(path) == 0


def test_judge_sets_ratio_and_the_ten_times_target():
    rows = [{"case": "cached read", "size": 28, "images_per_s": 100.0},
            {"case": "cached read", "size": 28, "images_per_s": 99.0},
            {"case": "cached read", "size": 64, "images_per_s": 99.0},
            {"case": "first pass", "size": 28, "images_per_s": 50.0}]
    bench.judge(rows, {28: (10.0, "somewhere")})
    assert [r["ratio"] for r in rows] == [10.0, 9.9, None, 5.0]
    assert [r.get("passed") for r in rows] == [True, False, None, None]
    assert rows[3].get("target") is None and rows[0]["target"] == bench.TARGET
    assert rows[0]["training_source"] == "somewhere" and rows[2]["training_source"] == ""


def test_main_measures_training_with_throughput_and_writes_the_csv(tmp_path, capsys):
    out = tmp_path / "decode.csv"
    assert bench.main(["--images", "12", "--source-size", "40", "--sizes", "28", "--processes", "1",
                       "--train-images", "64", "--workdir", str(tmp_path), "--output", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["format"]) for r in rows] == [("first pass", "png"), ("first pass", "dicom"),
                                                       ("cached read", "png"), ("cached read", "png"),
                                                       ("cached read", "png")]
    assert all(float(r["training_images_per_s"]) > 0 and "vit_medmnist_28" in r["training_source"] for r in rows)
    assert all(r["passed"] in ("True", "False") for r in rows[2:]) and rows[0]["passed"] == ""
    printed = capsys.readouterr().out
    assert "| png | 28 px | 1 | 12 |" in printed and "target >= 10" in printed
    assert list(tmp_path.iterdir()) == [out]  # the dataset and caches lived in a temporary folder, now gone
