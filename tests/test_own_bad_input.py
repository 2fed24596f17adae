"""Bad input for a hospital's own data, end to end through the command line: every mistake in a dataset is
refused with exit code 2 (never a traceback), in one message that names the file (relative to the dataset
where it is inside it) and the fix, and nothing is written: no record in the register, nothing in the cache."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from fl_medlego.cli import main
from fl_medlego.data.own.cache import decoded
from fl_medlego.data.own.registry import load_record
from fl_medlego.errors import UserError

CLASSES = ("effusion", "normal")


# ----- writing datasets --------------------------------------------------------------------------------------


def png(path: Path, seed: int, size: int = 8) -> Path:
    """A grey PNG whose pixels depend on `seed`, so that no two images of a dataset are the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return path


def folder(root: Path, per_class: int = 6) -> Path:
    """ROOT/<class>/imgN.png, two classes: a dataset that registers cleanly."""
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            png(root / name / f"img{i}.png", seed=100 * c + i)
    return root


def manifest(root: Path, rows: list[str], header: str = "path,label", classes: tuple[str, ...] | None = None) -> Path:
    """manifest.csv in `root` with `rows` under `header`, and classes.txt beside it when `classes` is given; the
    images of the clean folder dataset lie beside it (effusion/imgN.png, normal/imgN.png)."""
    folder(root)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    csv = root / "manifest.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    return csv


def good_rows() -> list[str]:
    return [f"{name}/img{i}.png,{name}" for name in CLASSES for i in range(6)]


def datalist(root: Path, data: dict) -> Path:
    folder(root)
    path = root / "datalist.json"
    path.write_text(json.dumps(data))
    return path


def dicom_without_pixels(path: Path) -> Path:
    """A valid DICOM file that holds no image: a structured report."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "SR"
    ds.save_as(path, enforce_file_format=True)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ----- the command line and what it leaves behind ------------------------------------------------------------


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """The register and the cache inside tmp_path; returns tmp_path."""
    monkeypatch.setenv("FL_MEDLEGO_DATASETS", str(tmp_path / "register"))
    monkeypatch.setenv("FL_MEDLEGO_CACHE", str(tmp_path / "cache"))
    return tmp_path


def add(name: str, source: str, path: Path, *extra: str) -> int:
    return main(["site", "data", "add", name, "--source", source, "--path", str(path), *extra])


def nothing_written(env: Path) -> None:
    register, cache = env / "register", env / "cache"
    assert not register.exists() or not list(register.iterdir()), "a refused dataset left a record"
    assert not cache.exists() or not list(cache.iterdir()), "a refused dataset left something in the cache"


def refused(capsys, code: int, names: str, fix: str, env: Path, root: Path) -> str:
    """Assert a clean refusal: exit 2, no traceback, exactly one line naming `names` (the file, as the user knows
    it, not by its path through the dataset folder `root`), holding `fix`, and nothing written. Returns that line."""
    out, err = capsys.readouterr()
    text = out + err
    assert code == 2, f"exit {code}, not 2 (1 is a traceback: a bug):\n{text}"
    assert "Traceback" not in text and "internal error" not in text
    lines = [line for line in text.splitlines() if names in line]
    assert len(lines) == 1, f"{names!r} should be named in exactly one line:\n{text}"
    assert fix in lines[0], f"the fix {fix!r} is missing from {lines[0]!r}"
    assert str(root) not in lines[0], f"the file should be named relative to the dataset: {lines[0]!r}"
    assert sum(line.startswith("error:") for line in out.splitlines()) == 1, text
    nothing_written(env)
    return lines[0]


# ----- folders -----------------------------------------------------------------------------------------------


def _empty_class(root: Path) -> tuple[str, str]:
    (root / "pneumothorax").mkdir()
    return "pneumothorax: class folder has no images", "add images or remove the folder"


def _non_image(root: Path) -> tuple[str, str]:
    (root / "normal" / "notes.txt").write_text("reviewed by Dr. X")
    return "normal/notes.txt", "remove it or move it out of the dataset folder"


def _truncated_png(root: Path) -> tuple[str, str]:
    truncate(root / "normal" / "img3.png")
    return "normal/img3.png", "replace or remove"


def _header_only_png(root: Path) -> tuple[str, str]:
    truncate(root / "normal" / "img3.png", keep=0.1)  # cut inside the header: Pillow cannot even open it
    return "normal/img3.png", "re"


def _text_named_png(root: Path) -> tuple[str, str]:
    (root / "normal" / "img3.png").write_text("not a PNG at all")
    return "normal/img3.png", "re"


def _dicom_without_pixels(root: Path) -> tuple[str, str]:
    dicom_without_pixels(root / "effusion" / "report.dcm")
    return "effusion/report.dcm", "remove"


def _dir_link_loop(root: Path) -> tuple[str, str]:
    os.symlink("..", root / "normal" / "loop")
    return "normal/loop", "remove the link"


def _file_link_loop(root: Path) -> tuple[str, str]:
    os.symlink("self.png", root / "normal" / "self.png")
    return "normal/self.png", "symlink loop"


def _link_outside(root: Path) -> tuple[str, str]:
    outside = png(root.parent / "elsewhere" / "x.png", seed=999)
    os.symlink(outside, root / "normal" / "linked.png")
    return "normal/linked.png", "copy the file into the dataset folder"


FOLDER_CASES: dict[str, Callable[[Path], tuple[str, str]]] = {
    "empty class folder": _empty_class,
    "non-image file": _non_image,
    "truncated PNG": _truncated_png,
    "DICOM without pixel data": _dicom_without_pixels,
    "symlink loop (folder)": _dir_link_loop,
    "symlink loop (file)": _file_link_loop,
    "link out of the dataset": _link_outside,
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_a_bad_folder_is_refused_naming_the_file_and_nothing_is_written(env, capsys, case):
    root = folder(env / "cxr")
    names, fix = FOLDER_CASES[case](root)
    refused(capsys, add("cxr", "folder", root), names, fix, env, root)


# registry.build_record reads each file's channels with decode.peek_channels before the check runs: a file whose
# header does not open must be named by its path in the dataset there too.
@pytest.mark.parametrize("case", [_header_only_png, _text_named_png],
                         ids=["header cut", "text named .png"])
def test_a_file_whose_header_does_not_open_is_named_relative_to_the_dataset(env, capsys, case):
    root = folder(env / "cxr")
    names, fix = case(root)
    refused(capsys, add("cxr", "folder", root), names, fix, env, root)


def test_a_bad_folder_is_refused_with_no_check_as_well(env, capsys):
    """--no-check skips decoding, not the listing: an empty class or a non-image is still refused."""
    root = folder(env / "cxr")
    names, fix = _non_image(root)
    refused(capsys, add("cxr", "folder", root, "--no-check"), names, fix, env, root)


# ----- CSV manifests and datalists ---------------------------------------------------------------------------


def _missing_label_column(root: Path) -> tuple[Path, str, str]:
    return manifest(root, [r.split(",")[0] for r in good_rows()], header="path"), "manifest.csv, row 1", \
        "add a 'label' column"


def _missing_path_column(root: Path) -> tuple[Path, str, str]:
    return manifest(root, good_rows(), header="image,label"), "manifest.csv, row 1", "name the column"


def _label_outside_classes(root: Path) -> tuple[Path, str, str]:
    rows = good_rows()
    rows[6] = "normal/img0.png,pneumothorax"
    return manifest(root, rows, classes=CLASSES), "manifest.csv, row 8", "add the class to the class list"


def _index_outside_classes(root: Path) -> tuple[Path, str, str]:
    rows = [f"{name}/img{i}.png,{c}" for c, name in enumerate(CLASSES) for i in range(6)]
    rows[-1] = "normal/img5.png,2"
    return manifest(root, rows, classes=CLASSES), "manifest.csv, row 13", "fix the label or the class list"


def _escaping_path(root: Path) -> tuple[Path, str, str]:
    png(root.parent / "secret.png", seed=7)
    return manifest(root, [*good_rows(), "../secret.png,normal"]), "manifest.csv, row 14", \
        "name a file inside the dataset folder"


def _absolute_path_elsewhere(root: Path) -> tuple[Path, str, str]:
    outside = png(root.parent / "elsewhere" / "secret.png", seed=7)
    return manifest(root, [*good_rows(), f"{outside},normal"]), "manifest.csv, row 14", \
        "name a file inside the dataset folder"


def _manifest_link_loop(root: Path) -> tuple[Path, str, str]:
    csv = manifest(root, [*good_rows(), "loop.png,normal"])
    os.symlink("loop.png", root / "loop.png")
    return csv, "manifest.csv, row 14", "fix or remove the link"


def _mixed_label_types(root: Path) -> tuple[Path, str, str]:
    rows = good_rows()
    rows[4] = "effusion/img4.png,1"
    return manifest(root, rows), "manifest.csv, row 6", "use class names everywhere, or class indices everywhere"


def _duplicate_rows(root: Path) -> tuple[Path, str, str]:
    return manifest(root, [*good_rows(), "./normal/img2.png,normal"]), "manifest.csv, row 14", "remove the duplicate"


def _non_image_row(root: Path) -> tuple[Path, str, str]:
    (root / "normal").mkdir(parents=True)
    (root / "normal" / "notes.txt").write_text("reviewed")
    return manifest(root, [*good_rows(), "normal/notes.txt,normal"]), "manifest.csv, row 14", "list image files only"


def _truncated_row(root: Path) -> tuple[Path, str, str]:
    csv = manifest(root, good_rows())
    truncate(root / "effusion" / "img2.png")
    return csv, "effusion/img2.png", "replace or remove"


def _datalist_mixed_labels(root: Path) -> tuple[Path, str, str]:
    items = [{"image": f"{n}/img{i}.png", "label": c} for c, n in enumerate(CLASSES) for i in range(6)]
    items[3]["label"] = "effusion"
    return datalist(root, {"training": items}), "datalist.json, training[3]", "give every image an integer label"


def _datalist_duplicate(root: Path) -> tuple[Path, str, str]:
    items = [{"image": f"{n}/img{i}.png", "label": c} for c, n in enumerate(CLASSES) for i in range(6)]
    data = {"training": items[:10], "test": [items[10], {"image": "effusion/img0.png", "label": 0}]}
    return datalist(root, data), "datalist.json, test[1]", "remove the duplicate"


def _datalist_escape(root: Path) -> tuple[Path, str, str]:
    png(root.parent / "secret.png", seed=7)
    items = [{"image": f"{n}/img{i}.png", "label": c} for c, n in enumerate(CLASSES) for i in range(6)]
    return datalist(root, {"training": [*items, {"image": "../secret.png", "label": 0}]}), \
        "datalist.json, training[12]", "name a file inside the dataset folder"


def _folder_row(root: Path) -> tuple[Path, str, str]:
    (root / "normal" / "dir.png").mkdir(parents=True)
    return manifest(root, [*good_rows(), "normal/dir.png,normal"]), "manifest.csv, row 14", "list image files only"


def _class_named_twice(root: Path) -> tuple[Path, str, str]:
    return manifest(root, good_rows(), classes=("effusion", "normal", "effusion")), "class list of manifest.csv", \
        "give each class once"


def _nul_in_path(root: Path) -> tuple[Path, str, str]:
    items = [{"image": f"{n}/img{i}.png", "label": c} for c, n in enumerate(CLASSES) for i in range(6)]
    return datalist(root, {"training": [*items, {"image": "normal/a\u0000.png", "label": 1}]}), \
        "datalist.json, training[12]", "fix the path"


def _deeply_nested_json(root: Path) -> tuple[Path, str, str]:
    path = datalist(root, {})
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path, "datalist.json: nests", '"training"'


LIST_CASES: dict[str, Callable[[Path], tuple[Path, str, str]]] = {
    "CSV missing the label column": _missing_label_column,
    "CSV missing the path column": _missing_path_column,
    "label outside classes.txt": _label_outside_classes,
    "class index outside classes.txt": _index_outside_classes,
    "path escaping with ../": _escaping_path,
    "absolute path elsewhere": _absolute_path_elsewhere,
    "symlink loop": _manifest_link_loop,
    "mixed label types": _mixed_label_types,
    "duplicate rows": _duplicate_rows,
    "non-image row": _non_image_row,
    "truncated image in a manifest": _truncated_row,
    "datalist: mixed label types": _datalist_mixed_labels,
    "datalist: duplicate": _datalist_duplicate,
    "datalist: path escaping": _datalist_escape,
    "a folder named like an image": _folder_row,
    "a class named twice in classes.txt": _class_named_twice,
    "NUL in a path": _nul_in_path,
    "deeply nested JSON": _deeply_nested_json,
}


@pytest.mark.parametrize("case", LIST_CASES)
def test_a_bad_manifest_or_datalist_is_refused_naming_file_and_row(env, capsys, case):
    path, names, fix = LIST_CASES[case](env / "cxr")
    source = "datalist" if path.suffix == ".json" else "manifest"
    line = refused(capsys, add("cxr", source, path), names, fix, env, path.parent)
    if case == "absolute path elsewhere":
        assert "is outside the dataset folder" in line


def test_a_class_list_that_is_not_utf8_is_refused(env, capsys):
    root = env / "cxr"
    csv = manifest(root, good_rows())
    (root / "classes.txt").write_bytes("effusion\nnormal\xe9\n".encode("latin-1"))
    refused(capsys, add("cxr", "manifest", csv), "classes.txt", "UTF-8", env, root)


def test_a_multi_frame_file_is_refused_with_its_own_fix(env, capsys):
    """The check keeps what a file's refusal says to do: here, choose a frame."""
    root = folder(env / "cxr")
    stack = np.random.default_rng(5).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    tifffile.imwrite(root / "normal" / "stack.tif", stack, photometric="minisblack")
    refused(capsys, add("cxr", "folder", root), "normal/stack.tif", "--frame K", env, root)


def test_a_clean_manifest_with_a_class_list_registers(env, capsys):
    """The control: the same writers give a dataset that registers, so the refusals above are the mistakes'."""
    csv = manifest(env / "cxr", good_rows(), classes=("normal", "effusion"))
    assert add("cxr", "manifest", csv) == 0, capsys.readouterr()
    record = load_record("cxr")
    assert record.class_names == ["normal", "effusion"] and len(record.files) == 12


# ----- the register ------------------------------------------------------------------------------------------


def test_the_same_name_twice_is_refused_and_the_first_record_kept_byte_for_byte(env, capsys):
    root = folder(env / "cxr")
    assert add("cxr", "folder", root) == 0
    record = env / "register" / "cxr.json"
    before = record.read_bytes()
    other = folder(env / "other", per_class=4)
    code = add("cxr", "folder", other, "--seed", "3")
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert "registered already" in out and "--replace" in out
    assert record.read_bytes() == before
    assert [p.name for p in (env / "register").iterdir()] == ["cxr.json"]
    assert add("cxr", "folder", other, "--replace") == 0  # the fix the message names works
    assert len(load_record("cxr").files) == 8


@pytest.mark.parametrize("change", ["modified", "removed"])
def test_check_of_a_dataset_changed_after_registration_names_the_fix(env, capsys, change):
    root = folder(env / "cxr")
    assert add("cxr", "folder", root) == 0
    capsys.readouterr()
    target = root / "normal" / "img2.png"
    if change == "modified":
        png(target, seed=12345, size=9)
    else:
        target.unlink()
    code = main(["site", "data", "check", "cxr"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err, out + err
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "changed since it was registered" in errors[0]
    assert "restore" in errors[0] and "site data add cxr --replace" in errors[0]


def test_check_of_a_file_corrupted_in_place_is_a_user_error(env, capsys):
    """A file rewritten with its size and modification time kept passes verify; the check itself must refuse it."""
    root = folder(env / "cxr")
    assert add("cxr", "folder", root, "--no-check") == 0
    capsys.readouterr()
    target = root / "normal" / "img1.png"
    stat = target.stat()
    target.write_bytes(b"\0" * stat.st_size)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code = main(["site", "data", "check", "cxr"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "normal/img1.png" in out
    assert code == 2


def test_removing_an_unknown_name_lists_the_known_ones(env, capsys):
    for name in ("cxr", "derm"):
        assert add(name, "folder", folder(env / name)) == 0
    capsys.readouterr()
    code = main(["site", "data", "remove", "xray"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert "'xray'" in out and "cxr, derm" in out
    assert sorted(p.name for p in (env / "register").iterdir()) == ["cxr.json", "derm.json"]


def test_removing_from_an_empty_register_says_there_is_none(env, capsys):
    code = main(["site", "data", "remove", "cxr"])
    out, _ = capsys.readouterr()
    assert code == 2 and "(none)" in out
    nothing_written(env)


# ----- the cache ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
def test_a_file_corrupted_after_registration_fails_the_cache_by_name_and_leaves_no_cache(env, capsys, processes):
    root = folder(env / "cxr")
    assert add("cxr", "folder", root, "--no-check") == 0
    record = load_record("cxr")
    truncate(root / "effusion" / "img4.png")
    with pytest.raises(UserError) as caught:
        decoded(record, 28, processes=processes)
    message = str(caught.value)
    assert message.startswith("effusion/img4.png: ") and str(env) not in message
    assert "re-export the file or remove it from the dataset" in message
    cache = env / "cache"
    assert not cache.exists() or not list(cache.iterdir()), list(cache.iterdir())
    png(root / "effusion" / "img4.png", seed=4)  # the fix: a readable file again
    assert decoded(record, 28, processes=processes).images.shape == (12, 28, 28, 1)
