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


def test_a_nodes_dataset_is_only_for_a_site_declared_as_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_MEDLEGO_DATASETS", str(tmp_path / "registry"))
    cfg = parse_run_config({"sites": "blood,cxr"})
    with pytest.raises(UserError, match="declares site 'blood' as the MedMNIST set bloodmnist.*'blood=node'"):
        load_site_data(cfg, "blood", {"site": "blood", "dataset": "smears"})
    with pytest.raises(UserError, match="one dataset .* for several sites"):
        load_site_data(cfg, "cxr", {"site": "blood,cxr", "dataset": "smears"})


def test_what_a_site_sends_back_about_unreadable_own_images_names_no_file(tmp_path, monkeypatch, caplog):
    """An error in a site's handler is the reply's reason at the coordinator: the file stays in the node's log."""
    from flwr.app import ConfigRecord, Context, MessageType, RecordDict

    from fl_medlego.cli.local_run import set_task_identity
    from fl_medlego.clients.app import open_site
    from fl_medlego.server.inprocess_grid import delivered_message

    monkeypatch.setenv("FL_MEDLEGO_CACHE", str(tmp_path / "cache"))
    _folder(tmp_path / "ct", {"a": 5, "b": 5})
    (tmp_path / "ct" / "a" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # DOE_JOHN's scan, say
    run_config = {"sites": f"ct=folder:{tmp_path / 'ct'}"}
    set_task_identity()
    msg = delivered_message(RecordDict({"config": ConfigRecord({"site": "ct"})}), MessageType.TRAIN, src=0, dst=1)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(),
                      run_config=run_config)
    with pytest.raises(UserError) as refused:
        open_site(msg, context)
    assert "3.png" not in str(refused.value) and str(tmp_path) not in str(refused.value)
    assert "node's log" in str(refused.value)


def test_a_spreadsheets_column_names_are_read_whatever_their_case(tmp_path):
    from fl_medlego.data.own.datalist import list_manifest

    _folder(tmp_path / "d", {"a": 2, "b": 2})
    rows = "".join(f"{c}/{i}.png,{c},P{i}\n" for c in "ab" for i in range(2))
    (tmp_path / "d" / "m.csv").write_text("Path,Label,PatientID\n" + rows)
    listing = list_manifest(tmp_path / "d" / "m.csv")
    assert listing.class_names == ("a", "b") and [e.patient for e in listing.entries] == ["P0", "P1", "P0", "P1"]
    (tmp_path / "d" / "semi.csv").write_text("path;label\na/0.png;a\n")
    with pytest.raises(UserError, match="separated by ';'"):
        list_manifest(tmp_path / "d" / "semi.csv")
