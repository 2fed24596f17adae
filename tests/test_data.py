"""Data: the bundled sample, root lookup errors, site specs and deterministic partitions."""

import numpy as np
import pytest
import torch

from fl_medlego.data import dirichlet_partition, iid_partition, load_medmnist, load_site, parse_sites
from fl_medlego.errors import ConfigError, UnknownNameError
from fl_medlego.train import to_model_input


def test_bundled_sample_loads_offline_and_names_its_source():
    loaded = load_medmnist("blood", "bundled")
    assert loaded.flag == "bloodmnist" and loaded.num_classes == 8 and loaded.task == "multi-class"
    assert "bundled sample" in loaded.source and "CC BY 4.0" in loaded.source
    assert loaded.splits["train"].images.shape[1:] == (28, 28, 3)
    assert loaded.splits["test"].labels.shape[1] == 1


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDMNIST_ROOT", raising=False)
    with pytest.raises(ConfigError, match="bundled sample has no dermamnist"):
        load_medmnist("derma", "bundled")


def test_a_folder_root_reads_that_folder_and_the_empty_root_the_environments(tmp_path, monkeypatch):
    src = load_medmnist("breast", "bundled")
    arrays = {f"{s}_{k}": getattr(src.splits[s], k) for s in src.splits for k in ("images", "labels")}
    named, env_root = tmp_path / "named", tmp_path / "env"
    for folder, n in ((named, 30), (env_root, 40)):
        folder.mkdir()
        np.savez(folder / "breastmnist.npz", **{k: v[:n] for k, v in arrays.items()})
    monkeypatch.setenv("MEDMNIST_ROOT", str(env_root))
    from_folder, from_env = load_medmnist("breast", str(named)), load_medmnist("breast", "")
    assert from_folder.source == f"breastmnist from {named}" and len(from_folder.splits["train"].images) == 30
    assert from_env.source == f"breastmnist from {env_root}" and len(from_env.splits["test"].labels) == 40
    np.testing.assert_array_equal(from_folder.splits["val"].images, src.splits["val"].images[:30])


def test_unknown_set_lists_known_ones():
    with pytest.raises(UnknownNameError, match="known MedMNIST 2D sets: .*pneumonia"):
        parse_sites("blood,pneumona")


def test_site_spec_splits_a_modality():
    sites = parse_sites("pneumonia:3,blood")
    assert [s.name for s in sites] == ["pneumonia-1", "pneumonia-2", "pneumonia-3", "blood"]
    assert {s.count for s in sites[:3]} == {3}
    with pytest.raises(ConfigError, match="each once"):
        parse_sites("blood,blood")


def test_iid_partition_is_deterministic_disjoint_and_complete():
    a, b = iid_partition(103, 4, seed=7), iid_partition(103, 4, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    merged = np.concatenate(a)
    assert len(merged) == 103 and len(np.unique(merged)) == 103


def test_dirichlet_partition_skews_labels():
    labels = np.repeat(np.arange(4), 250)[:, None]
    parts = dirichlet_partition(labels, 4, alpha=0.1, seed=0)
    assert len(np.unique(np.concatenate(parts))) == 1000
    shares = [np.bincount(labels[p, 0], minlength=4) / len(p) for p in parts]
    assert max(s.max() for s in shares) > 0.6  # strong skew somewhere; IID would be about 0.25 everywhere


def test_sites_of_one_modality_get_disjoint_shards():
    sites = parse_sites("pneumonia:2")
    shards = [load_site(s, "bundled", seed=3) for s in sites]
    flat = [s.train.images.reshape(len(s.train), -1) for s in shards]
    assert len(shards[0].train) + len(shards[1].train) == 600
    overlap = (flat[0][:, None, :] == flat[1][None, :20, :]).all(-1).any()
    assert not overlap
    again = load_site(sites[0], "bundled", seed=3)
    assert torch.equal(again.train.labels, shards[0].train.labels)


def test_caps_and_grayscale_and_rgb_inputs():
    gray = load_site(parse_sites("breast")[0], "bundled", max_train=50, max_eval=20)
    rgb = load_site(parse_sites("blood")[0], "bundled", max_train=50, max_eval=20)
    assert len(gray.train) == 50 and len(gray.test) == 20
    for data in (gray, rgb):
        x = to_model_input(data.train.images[:4], 28)
        assert x.shape == (4, 3, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert to_model_input(gray.train.images[:2], 56).shape == (2, 3, 56, 56)


def test_sites_of_a_modality_share_one_partition_per_process(monkeypatch):
    """1000 sites of one modality: drawing the partition per message made every message cost O(sites)."""
    from fl_medlego.data import sites as site_data

    drawn = []
    original = site_data.partition
    monkeypatch.setattr(site_data, "partition", lambda *a, **k: drawn.append(a[1]) or original(*a, **k))
    site_data._parts_cached.cache_clear()
    specs = parse_sites("breast:3")
    shards = [load_site(spec, "bundled", max_train=8, max_eval=4, seed=7) for spec in specs]
    assert drawn == [3, 3, 3]  # one partition of each split, for all three sites
    assert len({s.train.images.numpy().tobytes() for s in shards}) == 3  # and each site still has its own


def test_many_sites_readme_states_the_per_site_counts_of_its_scenario():
    """The README's image counts are the ones the scenario's own settings give each site of the bundled sample."""
    from pathlib import Path

    from fl_medlego.config import parse_run_config
    from fl_medlego.scenario import load_scenario_config
    from fl_medlego.site import load_site_data

    folder = Path(__file__).parent.parent / "scenarios" / "many_sites"
    cfg = parse_run_config(load_scenario_config(folder))
    counts: dict[str, dict[str, set[int]]] = {}
    for name in cfg.site_names:
        data = load_site_data(cfg, name)
        for split in ("train", "val", "test"):
            counts.setdefault(data.site.flag, {}).setdefault(split, set()).add(len(getattr(data, split)))

    def span(sizes: set[int]) -> str:
        return f"{min(sizes)}-{max(sizes)}" if len(sizes) > 1 else str(min(sizes))

    readme = " ".join((folder / "README.md").read_text().split())
    assert counts["bloodmnist"] == counts["organamnist"] == counts["pneumoniamnist"]  # stated once for the three
    blood, breast = counts["bloodmnist"], counts["breastmnist"]
    assert (f"a blood, organA or pneumonia site has {span(blood['train'])} training, {span(blood['val'])} "
            f"validation and {span(blood['test'])} test images, a breast site {span(breast['train'])}, "
            f"{span(breast['val'])} and {span(breast['test'])}") in readme


def test_sample_partition_gives_every_one_of_more_sites_than_images_its_own_draw():
    from fl_medlego.config import parse_run_config

    sites = parse_sites("breast:200")  # 78 validation images in the sample: a partition would leave sites empty
    shards = [load_site(s, "bundled", scheme="sample", max_train=16, max_eval=8, seed=1) for s in sites[:50]]
    assert all(len(d.train) == 16 and len(d.val) == 8 and len(d.test) == 8 for d in shards)
    assert len({d.val.images.numpy().tobytes() for d in shards}) == 50  # each site its own draw
    again = load_site(sites[3], "bundled", scheme="sample", max_train=16, max_eval=8, seed=1)
    assert torch.equal(again.train.images, shards[3].train.images)  # reproducible by seed
    with pytest.raises(ConfigError, match="data.max-train and data.max-eval"):
        parse_run_config({"data.partition": "sample"})
