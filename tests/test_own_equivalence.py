"""The honest test of a hospital's own images: a MedMNIST set exported as files plus a manifest, trained as a
site's own data, gives the metrics of the same site trained from the `.npz` (to 1e-6), for PNG and DICOM."""

import csv

import numpy as np
import pytest

from fl_medlego.cli import main
from fl_medlego.config import parse_run_config
from fl_medlego.site import load_site_data

# One local epoch on blood's bundled sample (600 train, 150 val, 300 test images): a few seconds.
SETTINGS = {"train.local-epochs": 1, "train.batch-size": 64, "lora.rank": 2, "seed": 3}


@pytest.fixture
def own_data_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_MEDLEGO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FL_MEDLEGO_DATASETS", str(tmp_path / "registry"))
    return tmp_path


def _export(folder, fmt):
    assert main(["data", "export", "blood", "--to", str(folder), "--format", fmt]) == 0
    return folder / "manifest.csv"


def _trained_metrics(cfg, site, data):
    result = cfg.kind_site().train(data, None, None)
    return cfg.kind_site().evaluate(data, result.update, result.state.head)


@pytest.mark.parametrize("fmt", ["png", "dicom"])
def test_a_site_trained_from_an_export_matches_the_same_site_trained_from_the_npz(own_data_env, fmt):
    manifest = _export(own_data_env / f"blood-{fmt}", fmt)
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1050 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert rows[0]["path"].endswith(".png" if fmt == "png" else ".dcm")

    medmnist_cfg = parse_run_config({"sites": "blood", **SETTINGS})
    own_cfg = parse_run_config({"sites": f"blood=manifest:{manifest}", **SETTINGS})
    assert own_cfg.site("blood").own_data and not medmnist_cfg.site("blood").own_data
    reference, own = load_site_data(medmnist_cfg, "blood"), load_site_data(own_cfg, "blood")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(own, split).images.numpy(), getattr(reference, split).images.numpy())
        np.testing.assert_array_equal(getattr(own, split).labels.numpy(), getattr(reference, split).labels.numpy())
    assert own.class_names == reference.class_names and own.num_classes == reference.num_classes == 8
    assert "/" not in own.origin and "images" in own.origin  # what the coordinator hears holds no path

    expected, got = _trained_metrics(medmnist_cfg, "blood", reference), _trained_metrics(own_cfg, "blood", own)
    assert expected["acc"] > 0.3  # it trained: 8 classes, a constant guess is about 0.2
    for metric in ("acc", "auc"):
        assert got[metric] == pytest.approx(expected[metric], abs=1e-6)


def test_a_dataset_decoded_ahead_by_site_data_cache_is_read_from_the_cache_alone(own_data_env, monkeypatch):
    manifest = _export(own_data_env / "blood-png", "png")
    assert main(["site", "data", "add", "smears", "--source", "manifest", "--path", str(manifest)]) == 0
    assert main(["site", "data", "cache", "smears", "--size", "28", "--processes", "2"]) == 0  # two workers
    folders = list((own_data_env / "cache").iterdir())
    assert len(folders) == 1 and (folders[0] / "images.npy").is_file()

    import fl_medlego.data.own.decode as decode

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached dataset must not be decoded again")

    monkeypatch.setattr(decode, "decode_image", no_decoding)
    cfg = parse_run_config({"sites": "smears", **SETTINGS})
    own = load_site_data(cfg, "smears", {"dataset": "smears"})
    reference = load_site_data(parse_run_config({"sites": "blood", **SETTINGS}), "blood")
    np.testing.assert_array_equal(own.train.images.numpy(), reference.train.images.numpy())
    assert len(own.train) == 600 and own.origin == "own manifest dataset: 1050 images, 8 classes"


def test_evaluate_scores_an_adapter_on_a_registered_dataset_as_on_the_npz(own_data_env, capsys):
    manifest = _export(own_data_env / "blood-dicom", "dicom")
    assert main(["site", "data", "add", "smears", "--source", "manifest", "--path", str(manifest)]) == 0
    cfg = parse_run_config({"sites": "blood", **SETTINGS})
    data = load_site_data(cfg, "blood")
    result = cfg.kind_site().train(data, None, None)
    folder = cfg.kind_server().save(result.update, own_data_env / "adapter", result.base_fingerprint)
    tiny = "train.local-epochs=1 train.batch-size=64 lora.rank=2 seed=3"
    common = ["evaluate", str(folder), "--scenario", "scenarios/cross_domain", "--site", "blood", "--head-epochs", "1"]
    capsys.readouterr()
    assert main([*common, "--run-config", f"sites='blood' {tiny}"]) == 0
    from_npz = capsys.readouterr().out
    # the same site name, its data from the node's registered dataset (the DICOM export of the same images)
    assert main([*common, "--run-config", f"sites='blood=node' {tiny}", "--dataset", "smears"]) == 0
    from_dataset = capsys.readouterr().out
    assert "ACC" in from_npz and from_npz.split(":", 1)[1] == from_dataset.split(":", 1)[1]
