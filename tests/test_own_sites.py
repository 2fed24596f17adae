"""The sites syntax for own-data sites, and a site's data named in place (simulation)."""

import numpy as np
import pytest
from PIL import Image

from fl_medlego.config import _sites_text, parse_run_config
from fl_medlego.data import parse_sites
from fl_medlego.errors import ConfigError, UnknownNameError, UserError
from fl_medlego.site import load_site_data


def test_a_name_that_is_no_medmnist_set_is_a_site_whose_node_supplies_its_data():
    blood, cxr, ct = parse_sites("blood,cxr,ct=folder:/data/ct scans")
    assert (blood.flag, blood.own_data) == ("bloodmnist", False)
    assert (cxr.name, cxr.flag, cxr.source) == ("cxr", "", "node")
    assert (ct.name, ct.source) == ("ct", "folder:/data/ct scans")
    cfg = parse_run_config({"sites": "blood,cxr,ct=folder:/data/ct"})
    assert cfg.site_names == ["blood", "cxr", "ct"]
    shown = _sites_text(cfg.sites)  # as summaries show the setting: it parses back to the same sites
    assert shown == "blood,cxr=node,ct=folder:/data/ct" and parse_sites(shown) == list(cfg.sites)


@pytest.mark.parametrize("spec, error, words", [
    ("pneumona", UnknownNameError, "write 'pneumona=node'"),  # a typo of a MedMNIST set is not a new site
    ("cxr:2", ConfigError, "one site"),
    ("cxr=s3:bucket", ConfigError, "folder, manifest, datalist, dataset"),
    ("cxr=folder:", ConfigError, "name=SOURCE:PATH"),
    ("../x=folder:/d", ConfigError, "site name"),
    ("cxr,cxr=node", ConfigError, "each once"),
])
def test_bad_own_site_entries_are_refused_with_the_fix(spec, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(")):
        parse_sites(spec)


def _folder(root, counts):
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = np.full((8, 8), 20 * i + (10 if name == "b" else 0), np.uint8)  # every image different
            Image.fromarray(image).save(root / name / f"{i}.png")


def test_a_site_named_in_place_reads_its_folder_and_sees_files_added_later(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_MEDLEGO_CACHE", str(tmp_path / "cache"))
    _folder(tmp_path / "ct", {"a": 5, "b": 5})
    cfg = parse_run_config({"sites": f"ct=folder:{tmp_path / 'ct'}"})
    first = load_site_data(cfg, "ct")
    assert first.class_names == ("a", "b") and first.num_classes == 2 and first.task == "binary-class"
    assert len(first.train) + len(first.val) + len(first.test) == 10
    assert first.train.images.shape[1:] == (28, 28, 1)  # resized to the model's input, grey kept grey
    _folder(tmp_path / "ct", {"a": 6})  # a file added: the split is made again, and the cache is a new one
    again = load_site_data(cfg, "ct")
    assert len(again.train) + len(again.val) + len(again.test) == 11


def test_a_site_without_data_says_how_to_give_it_some(monkeypatch):
    cfg = parse_run_config({"sites": "blood,cxr"})
    with pytest.raises(UserError, match="site 'cxr' has no data here.*site data add cxr.*cxr=folder:DIR"):
        load_site_data(cfg, "cxr")
