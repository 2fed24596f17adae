"""Listing a hospital's own dataset (folders, CSV manifests, datalists) and drawing its splits once."""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fl_medlego.data.own.sources import (
    BINARY,
    MULTI_CLASS,
    MULTI_LABEL,
    TASKS,
    DataSourceError,
    Entry,
    list_datalist,
    list_folder,
    list_manifest,
    list_source,
    resolve_inside,
    task_of,
)
from fl_medlego.data.own.splits import SPLITS, assign_splits, parse_fractions
from fl_medlego.errors import ConfigError, UnknownNameError, UserError


def png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)
    return path


def folder(root: Path, layout: dict[str, int]) -> Path:
    """layout: 'class' or 'split/class' -> number of PNGs."""
    for where, n in layout.items():
        for i in range(n):
            png(root / where / f"img{i}.png", value=i)
    return root


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----- tasks -------------------------------------------------------------------------------------------------


def test_task_words_map_onto_medmnist_task_strings():
    from fl_medlego.metrics import MULTI_LABEL as TRAINING_MULTI_LABEL

    assert MULTI_LABEL == TRAINING_MULTI_LABEL
    assert task_of("multi-class") == MULTI_CLASS == "multi-class"
    assert task_of("binary") == BINARY == "binary-class"
    assert task_of("multi-label") == MULTI_LABEL
    assert task_of(None) is None
    assert all(task_of(t) == t for t in TASKS)
    with pytest.raises(UnknownNameError, match="multi-label"):
        task_of("regression")


# ----- folders -----------------------------------------------------------------------------------------------


def test_a_folder_of_class_folders_is_listed_in_sorted_class_order(tmp_path):
    root = folder(tmp_path / "ds", {"pneumonia": 2, "covid": 1, "normal": 3})
    (root / "normal" / ".DS_Store").write_text("x")
    listing = list_folder(root)
    assert listing.source == "folder" and listing.root == root
    assert listing.class_names == ("covid", "normal", "pneumonia")
    assert listing.task == MULTI_CLASS
    assert [e.path for e in listing.entries] == [
        "covid/img0.png", "normal/img0.png", "normal/img1.png", "normal/img2.png",
        "pneumonia/img0.png", "pneumonia/img1.png"]
    assert [e.labels for e in listing.entries] == [(0,), (1,), (1,), (1,), (2,), (2,)]
    assert all(e.split is None and e.patient is None for e in listing.entries)
    assert listing.ignored == ("normal/.DS_Store",)


def test_two_class_folders_are_binary_and_a_task_overrides_but_not_multi_label(tmp_path):
    root = folder(tmp_path / "ds", {"a": 1, "b": 1})
    assert list_folder(root).task == BINARY
    assert list_folder(root, "multi-class").task == MULTI_CLASS
    with pytest.raises(DataSourceError, match="multi-label"):
        list_folder(root, "multi-label")
    folder(root, {"c": 1})
    with pytest.raises(DataSourceError, match="task binary with 3 classes"):
        list_folder(root, "binary")


def test_split_folders_keep_their_splits_and_take_the_union_of_classes(tmp_path):
    root = folder(tmp_path / "ds", {"test/b": 1, "train/a": 2, "train/b": 1, "val/a": 1, "test/c": 1})
    listing = list_folder(root)
    assert listing.class_names == ("a", "b", "c")
    assert [(e.split, e.path, e.labels) for e in listing.entries] == [
        ("train", "train/a/img0.png", (0,)), ("train", "train/a/img1.png", (0,)), ("train", "train/b/img0.png", (1,)),
        ("val", "val/a/img0.png", (0,)), ("test", "test/b/img0.png", (1,)), ("test", "test/c/img0.png", (2,))]
    assert list_folder(folder(tmp_path / "two", {"train/a": 1, "train/b": 1, "test/a": 1})).entries[-1].split == "test"


def test_split_folders_need_train_and_test(tmp_path):
    root = folder(tmp_path / "ds", {"train/a": 1, "train/b": 1, "val/a": 1})
    with pytest.raises(DataSourceError, match="train and test"):
        list_folder(root)


def test_nested_folders_inside_a_class_are_listed_sorted(tmp_path):
    root = folder(tmp_path / "ds", {"a/p2": 1, "a/p1": 1, "b": 1})
    assert [e.path for e in list_folder(root).entries] == ["a/p1/img0.png", "a/p2/img0.png", "b/img0.png"]


def test_a_folder_refuses_non_images_empty_classes_and_a_single_class(tmp_path):
    root = folder(tmp_path / "ds", {"a": 1, "b": 1})
    (root / "b" / "notes.txt").write_text("reading notes")
    with pytest.raises(DataSourceError, match=r"b/notes\.txt: is not an image file; remove it or move it out"):
        list_folder(root)
    (root / "b" / "notes.txt").unlink()
    (root / "c").mkdir()
    with pytest.raises(DataSourceError, match="c: class folder has no images; add images or remove the folder"):
        list_folder(root)
    (root / "c").rmdir()
    (root / "readme.md").write_text("x")
    with pytest.raises(DataSourceError, match="readme.md: is not inside a class folder"):
        list_folder(root)
    with pytest.raises(DataSourceError, match="1 class"):
        list_folder(folder(tmp_path / "one", {"a": 2}))


def test_a_symlink_loop_in_a_folder_is_an_error_naming_the_link(tmp_path):
    root = folder(tmp_path / "ds", {"a": 1, "b": 1})
    os.symlink(root / "a", root / "a" / "again")  # a folder linked into itself
    with pytest.raises(DataSourceError, match="a/again: is a symlink loop"):
        list_folder(root)
    os.unlink(root / "a" / "again")
    os.symlink(root, root / "b" / "up")  # a folder linked to the dataset's root
    with pytest.raises(DataSourceError, match="b/up: is a symlink loop"):
        list_folder(root)


def test_a_file_link_loop_in_a_folder_is_an_error_not_a_crash(tmp_path):
    """os.DirEntry.is_dir raises ELOOP for a link to itself: the listing names it instead of failing with OSError."""
    root = folder(tmp_path / "ds", {"a": 1, "b": 1})
    os.symlink("self.png", root / "b" / "self.png")
    with pytest.raises(DataSourceError, match=r"^b/self\.png: is a symlink loop; fix or remove the link$"):
        list_folder(root)
    os.unlink(root / "b" / "self.png")
    os.symlink("top", root / "top")  # at the top, where class folders are listed
    with pytest.raises(DataSourceError, match=r"^top: is a symlink loop"):
        list_folder(root)


def test_links_inside_a_folder_are_followed_but_not_out_of_it(tmp_path):
    root = folder(tmp_path / "ds", {"a": 1, "b": 1})
    os.symlink(root / "a" / "img0.png", root / "b" / "linked.png")
    assert "b/linked.png" in [e.path for e in list_folder(root).entries]
    outside = png(tmp_path / "elsewhere" / "x.png")
    os.symlink(outside, root / "b" / "escape.png")
    with pytest.raises(DataSourceError, match="b/escape.png: 'b/escape.png' is a link to .*outside the dataset"):
        list_folder(root)


# ----- resolve_inside ----------------------------------------------------------------------------------------


def test_resolve_inside_refuses_escapes_missing_files_and_loops(tmp_path):
    root = folder(tmp_path / "ds", {"a": 1})
    png(tmp_path / "x.png")
    assert resolve_inside(root, "a/img0.png") == (root / "a" / "img0.png").resolve()
    assert resolve_inside(root, str(root / "a" / "img0.png")) == (root / "a" / "img0.png").resolve()
    for escape in ("../x.png", str(tmp_path / "x.png"), "a/../../x.png"):
        with pytest.raises(DataSourceError, match="outside the dataset folder"):
            resolve_inside(root, escape)
    with pytest.raises(DataSourceError, match="does not exist"):
        resolve_inside(root, "a/none.png")
    os.symlink("loop.png", root / "loop.png")
    with pytest.raises(DataSourceError, match="symlink loop"):
        resolve_inside(root, "loop.png")
    with pytest.raises(DataSourceError, match=r"^row 3: path 'a/\\x00\.png' holds a NUL character; fix the path"):
        resolve_inside(root, "a/\0.png", "row 3")  # os.path would raise ValueError
    assert issubclass(DataSourceError, UserError)


# ----- CSV manifests -----------------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "ds"
    for name in ("p1.png", "p2.png", "p3.png", "p4.png", "sub/p5.png"):
        png(root / name)
    return root


def test_a_manifest_keeps_row_order_and_sorts_text_class_names(images):
    csv = write_csv(images / "labels.csv", "path,label,patient\np3.png,normal,A\np1.png,covid,B\n"
                    "./sub/p5.png,normal,\n\np2.png,pneumonia,A\n")
    listing = list_manifest(csv)
    assert listing.source == "manifest" and listing.root == images
    assert listing.class_names == ("covid", "normal", "pneumonia") and listing.task == MULTI_CLASS
    assert listing.entries == (Entry("p3.png", (1,), None, "A"), Entry("p1.png", (0,), None, "B"),
                               Entry("sub/p5.png", (1,), None, None), Entry("p2.png", (2,), None, "A"))


def test_a_manifest_with_integer_labels_and_a_class_list(images):
    csv = write_csv(images / "labels.csv", "path,label\np1.png,2\np2.png,0\n")
    assert list_manifest(csv).class_names == ("0", "1", "2")
    assert [e.labels for e in list_manifest(csv).entries] == [(2,), (0,)]
    named = list_manifest(csv, classes=["cat", "dog", "eel"])
    assert named.class_names == ("cat", "dog", "eel")
    with pytest.raises(DataSourceError, match=r"labels.csv, row 2: label 2 is outside the classes \(0..1\)"):
        list_manifest(csv, classes=["cat", "dog"])
    text = write_csv(images / "text.csv", "path,label\np1.png,dog\np2.png,cow\n")
    assert [e.labels for e in list_manifest(text, classes=["cow", "dog"]).entries] == [(1,), (0,)]
    with pytest.raises(DataSourceError, match=r"text.csv, row 3: label 'cow' is not one of the classes"):
        list_manifest(text, classes=["cat", "dog"])


def test_a_class_list_naming_a_class_twice_or_none_is_refused(images):
    csv = write_csv(images / "labels.csv", "path,label\np1.png,cat\np2.png,dog\n")
    with pytest.raises(DataSourceError, match=r"^the class list of labels.csv: names 'cat' twice; give each class"):
        list_manifest(csv, classes=["cat", "dog", "cat"])
    with pytest.raises(DataSourceError, match="class list of labels.csv: is empty"):
        list_manifest(csv, classes=[])
    assert list_manifest(csv, classes=[" dog", "cat "]).class_names == ("dog", "cat")


def test_a_manifest_with_mixed_label_types_names_the_row(images):
    csv = write_csv(images / "labels.csv", "path,label\np1.png,0\np2.png,1\np3.png,normal\n")
    with pytest.raises(DataSourceError, match=r"labels.csv, row 4: label 'normal' mixes integer and text"):
        list_manifest(csv)


def test_a_manifest_refuses_duplicate_rows(images):
    csv = write_csv(images / "labels.csv", "path,label\np1.png,a\np2.png,b\n./p1.png,b\n")
    with pytest.raises(DataSourceError, match=r"labels.csv, row 4: 'p1.png' is listed twice \(also row 2\)"):
        list_manifest(csv)


@pytest.mark.parametrize("path,message", [
    ("../x.png", "outside the dataset folder"),
    ("sub/../../x.png", "outside the dataset folder"),
    ("ABSOLUTE", "outside the dataset folder"),
    ("LINK", "is a link to .* outside the dataset folder"),
    ("missing.png", "does not exist"),
    ("notes.txt", "is not an image file"),
    ("folder.png", "'folder.png' is not a regular file"),
    ("", "empty path"),
])
def test_a_manifest_refuses_paths_it_must_not_read(images, tmp_path, path, message):
    outside = png(tmp_path / "x.png")
    (images / "notes.txt").write_text("notes")
    (images / "folder.png").mkdir()
    os.symlink(outside, images / "link.png")
    path = {"ABSOLUTE": str(outside), "LINK": "link.png"}.get(path, path)
    csv = write_csv(images / "labels.csv", f"path,label\np1.png,a\n{path},b\n")
    with pytest.raises(DataSourceError, match=f"labels.csv, row 3: .*{message}"):
        list_manifest(csv)


def test_an_absolute_path_inside_the_manifest_folder_is_kept_relative(images):
    csv = write_csv(images / "labels.csv", f"path,label\n{images / 'sub' / 'p5.png'},a\np1.png,b\n")
    assert list_manifest(csv).entries[0].path == "sub/p5.png"


def test_a_manifest_names_missing_columns_and_empty_labels(images):
    with pytest.raises(DataSourceError, match="row 1: no 'path' column"):
        list_manifest(write_csv(images / "a.csv", "file,label\np1.png,a\n"))
    with pytest.raises(DataSourceError, match="row 1: no 'label' column"):
        list_manifest(write_csv(images / "b.csv", "path,finding\np1.png,1\n"), "multi-class")
    with pytest.raises(DataSourceError, match="row 1: no label columns"):
        list_manifest(write_csv(images / "c.csv", "path,patient\np1.png,A\n"))
    with pytest.raises(DataSourceError, match="row 3: empty label"):
        list_manifest(write_csv(images / "d.csv", "path,label\np1.png,a\np2.png,\n"))
    with pytest.raises(DataSourceError, match="row 2: 3 fields, the header has 2"):
        list_manifest(write_csv(images / "e.csv", "path,label\np1.png,a,extra\n"))


def test_a_multi_label_manifest_has_one_column_per_finding_in_csv_order(images):
    csv = write_csv(images / "labels.csv", "path,effusion,split,atelectasis,patient\n"
                    "p1.png,1,train,0,A\np2.png,0,test,0,B\np3.png,1,val,1,C\n")
    listing = list_manifest(csv)
    assert listing.task == MULTI_LABEL and listing.class_names == ("effusion", "atelectasis")
    assert [(e.labels, e.split, e.patient) for e in listing.entries] == [
        ((1, 0), "train", "A"), ((0, 0), "test", "B"), ((1, 1), "val", "C")]
    assert list_manifest(csv, "multi-label").class_names == ("effusion", "atelectasis")
    bad = write_csv(images / "bad.csv", "path,effusion,atelectasis\np1.png,1,0\np2.png,yes,0\n")
    with pytest.raises(DataSourceError, match=r"bad.csv, row 3: finding 'effusion' is 'yes', not 0 or 1"):
        list_manifest(bad)


def test_a_split_column_is_all_or_nothing_and_only_train_val_test(images):
    good = write_csv(images / "good.csv", "path,label,split\np1.png,a,train\np2.png,b,TEST\np3.png,a,val\n")
    assert [e.split for e in list_manifest(good).entries] == ["train", "test", "val"]
    bad = write_csv(images / "bad.csv", "path,label,split\np1.png,a,train\np2.png,b,holdout\n")
    with pytest.raises(DataSourceError, match="row 3: split 'holdout' is not one of train, val, test"):
        list_manifest(bad)
    mixed = write_csv(images / "mixed.csv", "path,label,split\np1.png,a,train\np2.png,b,\np3.png,a,\n")
    with pytest.raises(DataSourceError, match="mixed.csv: 2 of 3 rows have no split"):
        list_manifest(mixed)


def test_a_manifest_with_a_byte_order_mark_reads_its_header(images):
    csv = images / "excel.csv"
    csv.write_bytes("path,label\np1.png,a\np2.png,b\n".encode("utf-8-sig"))
    assert list_manifest(csv).class_names == ("a", "b")


# ----- datalists ---------------------------------------------------------------------------------------------


def test_a_datalist_maps_its_keys_onto_splits_and_names_classes(images):
    data = {"training": [{"image": "p1.png", "label": 1, "patient": 7}, {"image": "p2.png", "label": 0}],
            "validation": [{"image": "p3.png", "label": 0}], "test": [{"image": "sub/p5.png", "label": 1}],
            "labels": {"0": "benign", "1": "malignant"}}
    (images / "datalist.json").write_text(json.dumps(data))
    listing = list_datalist(images / "datalist.json")
    assert listing.source == "datalist" and listing.task == BINARY
    assert listing.class_names == ("benign", "malignant")
    assert listing.entries == (Entry("p1.png", (1,), "train", "7"), Entry("p2.png", (0,), "train", None),
                               Entry("p3.png", (0,), "val", None), Entry("sub/p5.png", (1,), "test", None))


def test_a_datalist_with_training_alone_leaves_the_splits_to_be_drawn(images):
    data = {"training": [{"image": "p1.png", "label": [1, 0]}, {"image": "p2.png", "label": [0, 1]}]}
    (images / "d.json").write_text(json.dumps(data))
    listing = list_datalist(images / "d.json")
    assert listing.task == MULTI_LABEL and listing.class_names == ("0", "1")
    assert all(e.split is None for e in listing.entries)


@pytest.mark.parametrize("data,message", [
    ({"training": [{"image": "p1.png", "label": 0}, {"image": "p2.png", "label": "x"}]}, r"training\[1\]: label 'x'"),
    ({"training": [{"image": "p1.png", "label": 0}, {"image": "p1.png", "label": 1}]},
     r"training\[1\]: 'p1.png' is listed twice \(also training\[0\]\)"),
    ({"training": [{"image": "../x.png", "label": 0}]}, "outside the dataset folder"),
    ({"training": ["p1.png"]}, r"training\[0\]: is not an object"),
    ({"validation": []}, "no 'training' list"),
    ({"training": [{"image": "p1.png", "label": 0}, {"image": "p2.png", "label": 2}], "labels": {"0": "a", "1": "b"}},
     "labels go up to 2"),
])
def test_a_datalist_names_its_mistakes(images, tmp_path, data, message):
    png(tmp_path / "x.png")
    (images / "d.json").write_text(json.dumps(data))
    with pytest.raises(DataSourceError, match=message):
        list_datalist(images / "d.json")


def test_a_datalist_too_deep_to_parse_is_a_data_source_error(images):
    (images / "d.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads raises RecursionError
    with pytest.raises(DataSourceError, match=r"^d\.json: nests lists or objects too deeply"):
        list_datalist(images / "d.json")


def test_the_list_readers_live_in_datalist_and_stay_importable_from_sources():
    from fl_medlego.data.own import datalist, sources

    assert sources.list_manifest is datalist.list_manifest is list_manifest
    assert sources.list_datalist is datalist.list_datalist is list_datalist
    assert sources.DATALIST_KEYS is datalist.DATALIST_KEYS
    assert sources.SOURCES == {"folder": list_folder, "manifest": list_manifest, "datalist": list_datalist}
    with pytest.raises(AttributeError, match="no attribute 'list_zip'"):
        sources.list_zip  # noqa: B018


def test_list_source_dispatches_by_name(images):
    write_csv(images / "labels.csv", "path,label\np1.png,a\np2.png,b\n")
    assert list_source("manifest", images / "labels.csv").source == "manifest"
    assert list_source("folder", folder(images.parent / "f", {"a": 1, "b": 1}), "multi-class").task == MULTI_CLASS
    with pytest.raises(UnknownNameError, match="unknown data source 'zip'; known data sources: datalist, folder"):
        list_source("zip", images)


# ----- splits ------------------------------------------------------------------------------------------------


def test_parse_fractions_accepts_three_shares_summing_to_one():
    assert parse_fractions("0.7, 0.1, 0.2") == (0.7, 0.1, 0.2)
    assert parse_fractions("0.8,0,0.2") == (0.8, 0.0, 0.2)
    for bad, why in [("0.7,0.3", "need 3 numbers"), ("0.7,a,0.2", "not all numbers"), ("0.7,0.2,0.2", "sum to 1.1"),
                     ("1.2,-0.4,0.2", ">= 0"), ("0,0.5,0.5", "train and test"), ("0.9,0.1,0", "train and test"),
                     ("nan,0,1", ">= 0")]:
        with pytest.raises(ConfigError, match=why):
            parse_fractions(bad)


def entries(n_patients: int, seed: int = 0) -> list[Entry]:
    """Patients with 1-4 images each, of 3 unequal classes (a patient's images mostly share its class)."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        cls = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
        for i in range(int(rng.integers(1, 5))):
            out.append(Entry(f"p{p}_{i}.png", (cls if i < 3 else (cls + 1) % 3,), None, f"P{p}"))
    return out


def test_given_splits_are_kept_and_mixed_ones_refused():
    given = [Entry("a", (0,), "test"), Entry("b", (1,), "train"), Entry("c", (0,), "val")]
    assert assign_splits(given, (0.7, 0.1, 0.2), seed=3) == ["test", "train", "val"]
    with pytest.raises(ConfigError, match="1 of 2 rows have no split"):
        assign_splits([Entry("a", (0,), "train"), Entry("b", (0,), None)], (0.7, 0.1, 0.2), 0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_drawn_splits_never_put_a_patient_in_two_splits_and_keep_the_classes(seed):
    data = entries(150)
    splits = assign_splits(data, (0.6, 0.2, 0.2), seed)
    by_patient: dict[str, set[str]] = {}
    for entry, split in zip(data, splits):
        by_patient.setdefault(entry.patient, set()).add(split)
    assert all(len(s) == 1 for s in by_patient.values())
    totals = Counter(e.labels[0] for e in data)
    for cls, total in totals.items():
        got = Counter(s for e, s in zip(data, splits) if e.labels[0] == cls)
        for split, share in zip(SPLITS, (0.6, 0.2, 0.2)):
            assert abs(got[split] - share * total) <= 0.06 * total + 4, (cls, split, got, total)


def test_drawn_splits_are_fixed_by_the_seed():
    data = entries(60)
    assert assign_splits(data, (0.7, 0.1, 0.2), 5) == assign_splits(data, (0.7, 0.1, 0.2), 5)
    assert assign_splits(data, (0.7, 0.1, 0.2), 5) != assign_splits(data, (0.7, 0.1, 0.2), 6)


def test_entries_without_a_patient_are_split_one_by_one_and_a_zero_share_gets_none():
    data = [Entry(f"{i}.png", (i % 2,)) for i in range(100)]
    got = Counter(assign_splits(data, (0.8, 0.0, 0.2), 0))
    assert got == {"train": 80, "test": 20}


def test_a_tiny_class_goes_to_train_first():
    data = [Entry(f"{i}.png", (0,)) for i in range(40)] + [Entry("rare.png", (1,))]
    for seed in range(5):
        assert assign_splits(data, (0.3, 0.3, 0.4), seed)[-1] == "train"


def test_multi_label_entries_are_stratified_by_their_first_finding():
    data = [Entry(f"{i}.png", (1, 0) if i < 50 else (0, 0)) for i in range(100)]
    splits = assign_splits(data, (0.5, 0.0, 0.5), 0)
    assert Counter(s for s in splits[:50]) == {"train": 25, "test": 25}
    assert Counter(s for s in splits[50:]) == {"train": 25, "test": 25}
