"""The local check of a hospital's dataset: every file opened and hashed, each rule's finding and its fix."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fl_medlego.data.own.check import CheckReport, Finding, check_dataset
from fl_medlego.data.own.sources import Entry, Listing, list_folder, list_manifest


def png(path: Path, value: int = 0, size: int = 8, colour: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if colour else (size, size)
    pixels = np.full(shape, value, dtype=np.uint8)
    pixels[0, 0] = 255 - value  # two values, so that no two images made here by accident share their bytes
    Image.fromarray(pixels).save(path)
    return path


def split_folder(root: Path, per_class: dict[str, int], start: int = 0) -> Path:
    """'split/class' -> that many distinct PNGs."""
    value = start
    for where, n in per_class.items():
        for i in range(n):
            value += 1
            png(root / where / f"img{i}.png", value=value)
    return root


def checked(listing: Listing, splits=None, **kw) -> CheckReport:
    return check_dataset(listing, [e.split for e in listing.entries] if splits is None else splits, **kw)


def only(report: CheckReport, level: str, contains: str) -> Finding:
    found = [f for f in report.findings if f.level == level and contains in f.what]
    assert len(found) == 1, report.lines()
    return found[0]


BALANCED = {"train/a": 3, "train/b": 3, "val/a": 2, "val/b": 2, "test/a": 2, "test/b": 2}


def test_a_clean_dataset_passes_with_its_counts(tmp_path):
    listing = list_folder(split_folder(tmp_path / "ds", BALANCED))
    calls = []
    report = checked(listing, progress=calls.append)
    assert report.ok and report.findings == []
    assert report.counts == {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}}
    assert report.sizes == {"8x8": 14} and report.channels == {1: 14} and report.unreadable == []
    assert calls == list(range(1, 15))
    assert report.lines()[-1].startswith("OK")


def test_the_same_image_in_two_splits_is_an_error_naming_the_pair(tmp_path):
    root = split_folder(tmp_path / "ds", BALANCED)
    (root / "test" / "b" / "copy.png").write_bytes((root / "train" / "a" / "img1.png").read_bytes())
    report = checked(list_folder(root))
    assert not report.ok
    finding = only(report, "error", "in two splits")
    assert "train/a/img1.png (train) = test/b/copy.png (test)" in finding.detail
    assert "remove one copy" in finding.fix


def test_the_same_image_twice_in_one_split_is_a_warning(tmp_path):
    root = split_folder(tmp_path / "ds", BALANCED)
    (root / "train" / "b" / "copy.png").write_bytes((root / "train" / "a" / "img0.png").read_bytes())
    report = checked(list_folder(root))
    assert report.ok
    assert "train/a/img0.png = train/b/copy.png (train)" in only(report, "warning", "twice in one split").detail


def test_a_truncated_file_is_an_error_by_its_relative_path(tmp_path):
    root = split_folder(tmp_path / "ds", BALANCED)
    bad = root / "val" / "a" / "img1.png"
    bad.write_bytes(bad.read_bytes()[:40])
    report = checked(list_folder(root))
    assert not report.ok
    assert report.unreadable == ["val/a/img1.png"]
    finding = only(report, "error", "1 file does not decode")
    assert finding.detail.startswith("val/a/img1.png (") and str(tmp_path) not in finding.detail
    assert report.sizes == {"8x8": 13}


def test_a_file_refused_for_a_reason_of_its_own_keeps_its_fix(tmp_path):
    """A multi-frame file is no truncated copy: the finding says to choose a frame, as the decoder does."""
    import tifffile

    root = split_folder(tmp_path / "ds", BALANCED)
    tifffile.imwrite(root / "train" / "a" / "stack.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    finding = only(checked(list_folder(root)), "error", "1 file does not decode")
    assert finding.detail == "train/a/stack.tif (it has 3 frames; register it with --frame K to use one frame, " \
        "or export single frames)"
    assert checked(list_folder(root), frame=0).ok  # the first frame of it, and of every single-frame file


def test_many_unreadable_files_are_listed_up_to_twenty(tmp_path):
    root = split_folder(tmp_path / "ds", {"train/a": 15, "train/b": 15, "test/a": 1, "test/b": 1})
    for path in sorted(root.rglob("img*.png"))[:25]:
        path.write_bytes(b"not a png")
    report = checked(list_folder(root))
    assert len(report.unreadable) == 25
    assert only(report, "error", "25 files do not decode").detail.endswith(" and 5 more")


def test_a_patient_in_two_splits_and_a_missing_test_split_are_errors(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        png(root / f"{i}.png", value=10 * i)
    csv = root / "labels.csv"
    csv.write_text("path,label,patient,split\n0.png,a,P1,train\n1.png,b,P2,train\n2.png,a,P1,val\n3.png,b,P3,val\n")
    report = checked(list_manifest(csv))
    assert not report.ok
    assert only(report, "error", "patient in two splits").detail == "P1 (train, val)"
    assert "test split is empty" in only(report, "error", "no test images").detail
    # The same listing with splits drawn elsewhere (as registration does): the splits given to the check count.
    fixed = checked(list_manifest(csv), splits=["train", "train", "train", "test"])
    assert not any("patient" in f.what or "no test" in f.what for f in fixed.findings)


def test_few_images_per_class_mixed_sizes_channels_and_hidden_files_are_warnings(tmp_path):
    root = split_folder(tmp_path / "ds", BALANCED)
    png(root / "train" / "a" / "big.png", value=99, size=16)
    png(root / "train" / "b" / "colour.png", value=77, colour=True)
    (root / "train" / "b" / ".DS_Store").write_text("x")
    report = checked(list_folder(root), min_per_class=3)
    assert report.ok
    assert only(report, "warning", "val: classes with few images (under 3)").detail == "a 2, b 2"
    assert only(report, "warning", "test: classes with few images").detail == "a 2, b 2"
    assert not [f for f in report.findings if f.what.startswith("train:")]
    assert only(report, "warning", "different sizes").detail == "8x8 15, 16x16 1"
    assert only(report, "warning", "grey and colour").detail == "grey 15, colour 1"
    assert report.channels == {1: 15, 3: 1}
    assert only(report, "warning", "hidden file skipped").detail == "train/b/.DS_Store"


def test_a_class_imbalance_in_train_suggests_class_weighting(tmp_path):
    root = split_folder(tmp_path / "ds", {"train/a": 23, "train/b": 2, "test/a": 2, "test/b": 2})
    finding = only(checked(list_folder(root)), "warning", "class imbalance")
    assert "ratio 12:1" in finding.detail and "a has 23" in finding.detail
    assert "train.class-balance=loss" in finding.fix
    balanced = split_folder(tmp_path / "ok", {"train/a": 20, "train/b": 2, "test/a": 2, "test/b": 2})
    assert not [f for f in checked(list_folder(balanced)).findings if "imbalance" in f.what]


def test_multi_label_counts_are_positives_per_finding(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        png(root / f"{i}.png", value=10 * i)
    csv = root / "labels.csv"
    csv.write_text("path,effusion,mass,split\n0.png,1,0,train\n1.png,1,1,train\n2.png,0,0,test\n3.png,0,1,test\n")
    report = checked(list_manifest(csv), min_per_class=1)
    assert report.counts == {"train": {"effusion": 2, "mass": 1}, "test": {"effusion": 0, "mass": 1}}
    assert only(report, "warning", "test: findings with few positives").detail == "effusion 0"


def test_report_lines_put_errors_first_and_every_finding_has_a_fix(tmp_path):
    root = split_folder(tmp_path / "ds", {"train/a": 1, "train/b": 1, "test/a": 1, "test/b": 1})
    (root / "test" / "a" / "copy.png").write_bytes((root / "train" / "a" / "img0.png").read_bytes())
    report = checked(list_folder(root))
    lines = report.lines()
    levels = [line.split(":")[0] for line in lines if line.startswith(("ERROR", "WARNING"))]
    assert levels == sorted(levels) and levels[0] == "ERROR" and "WARNING" in levels
    assert all(f.fix for f in report.findings)
    assert lines[-1].startswith("NOT OK")


def test_a_file_removed_after_listing_is_reported_not_raised(tmp_path):
    root = split_folder(tmp_path / "ds", BALANCED)
    listing = list_folder(root)
    os.remove(root / "test" / "b" / "img1.png")
    report = checked(listing)
    assert report.unreadable == ["test/b/img1.png"] and not report.ok


def test_the_splits_must_match_the_entries():
    listing = Listing("folder", Path("."), "binary-class", ("a", "b"), (Entry("x.png", (0,)),))
    with pytest.raises(ValueError, match="2 splits for 1 entries"):
        check_dataset(listing, ["train", "test"])
