"""A node trains only on the data its operator named: a folder is that folder alone (never created,
never searched past, never a download), and only the download root ('') fetches, only what is missing."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_medlego.cli import main
from fl_medlego.clients.site_node import SiteNodeConfig, check_site, create_site_keys
from fl_medlego.config import parse_run_config
from fl_medlego.data import load_medmnist, load_site, locate_medmnist, medmnist_source, parse_sites
from fl_medlego.data.medmnist_source import BUNDLED_ROOT
from fl_medlego.errors import UserError
from fl_medlego.site import load_site_data

SEVEN = ("blood", "breast", "derma", "organa", "path", "pneumonia", "retina")


def copy_of_sample(folder: Path, *flags: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for flag in flags:
        (folder / f"{flag}.npz").write_bytes((BUNDLED_ROOT / f"{flag}.npz").read_bytes())
    return folder


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def fetched(monkeypatch, tmp_path):
    """Downloads recorded instead of made: each writes a tiny MedMNIST-format file, so loading goes on."""
    calls = []

    def fake_download(flag, size, folder):
        calls.append((flag, size, Path(folder)))
        folder.mkdir(parents=True, exist_ok=True)
        tiny = {f"{s}_{k}": np.zeros((3, 28, 28) if k == "images" else (3, 1), dtype=np.uint8)
                for s in ("train", "val", "test") for k in ("images", "labels")}
        np.savez(folder / f"{flag}.npz", **tiny)
        return folder / f"{flag}.npz"

    monkeypatch.setattr(medmnist_source, "download_medmnist", fake_download)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.medmnist is the test's own
    monkeypatch.delenv("MEDMNIST_ROOT", raising=False)
    return calls


def test_a_missing_folder_is_refused_by_name_and_not_created(tmp_path, monkeypatch, fetched):
    holding = copy_of_sample(tmp_path / "env", "breastmnist")
    monkeypatch.setenv("MEDMNIST_ROOT", str(holding))  # holds the set, yet is not what the operator named
    missing = tmp_path / "missing"
    with pytest.raises(UserError, match=f"data folder {missing} does not exist .*create it and put breastmnist.npz"):
        load_medmnist("breast", str(missing))
    with pytest.raises(UserError, match="is not a folder"):
        load_medmnist("breast", str(holding / "breastmnist.npz"))
    assert not missing.exists() and fetched == [] and not (tmp_path / "home").exists()


def test_a_folder_without_the_set_is_refused_even_when_the_environment_holds_it(tmp_path, monkeypatch, fetched):
    monkeypatch.setenv("MEDMNIST_ROOT", str(copy_of_sample(tmp_path / "env", "breastmnist")))
    copy_of_sample(tmp_path / "home" / ".medmnist", "breastmnist")
    named = copy_of_sample(tmp_path / "named", "bloodmnist")
    before = tree(tmp_path)
    with pytest.raises(UserError, match=f"breastmnist.npz is not in the data folder {named} .*set the data root to ''"):
        load_medmnist("breast", str(named))
    # What `compare` and `flwr run` read: the scenario's data.root, or a node's data-root over it.
    cfg = parse_run_config({"sites": "breast", "data.root": str(named)})
    with pytest.raises(UserError, match="breastmnist.npz is not in the data folder"):
        load_site_data(cfg, "breast")
    with pytest.raises(UserError, match="breastmnist.npz is not in the data folder"):
        load_site_data(parse_run_config({"sites": "breast"}), "breast", {"data-root": str(named)})
    assert tree(tmp_path) == before and fetched == []
    assert load_medmnist("blood", str(named)).source == f"bloodmnist from {named}"


def test_the_download_root_fetches_only_the_sets_missing_there(tmp_path, monkeypatch, fetched):
    env_root = copy_of_sample(tmp_path / "env", "bloodmnist", "breastmnist")
    monkeypatch.setenv("MEDMNIST_ROOT", str(env_root))
    located = {name: locate_medmnist(name, "") for name in SEVEN}
    assert {n for n, where in located.items() if not where.present} == {"derma", "organa", "path", "pneumonia",
                                                                          "retina"}
    assert fetched == []  # looking up fetches nothing
    sources = {name: load_medmnist(name, "").source for name in SEVEN}
    assert fetched == [(f"{n}mnist", 28, env_root) for n in ("derma", "organa", "path", "pneumonia", "retina")]
    assert sources["blood"] == f"bloodmnist from {env_root}"
    assert sources["derma"] == f"dermamnist downloaded from MedMNIST into {env_root}"
    for name in SEVEN:  # a second run finds everything where the first put it
        load_medmnist(name, "")
    assert len(fetched) == 5 and not (tmp_path / "home").exists()


def test_without_medmnist_root_the_download_root_is_the_home_folders(tmp_path, fetched):
    home_root = tmp_path / "home" / ".medmnist"
    assert not locate_medmnist("derma", "").present and not home_root.exists()  # looked up, nothing created
    assert load_site(parse_sites("derma")[0], "").origin == "dermamnist downloaded from MedMNIST"
    assert fetched == [("dermamnist", 28, home_root)]


def test_the_bundled_root_ignores_medmnist_root(tmp_path, monkeypatch, fetched):
    monkeypatch.setenv("MEDMNIST_ROOT", str(copy_of_sample(tmp_path / "env", "breastmnist")))
    assert load_medmnist("breast", "bundled").source.startswith("bundled sample of breastmnist")
    with pytest.raises(UserError, match="bundled sample has no dermamnist"):
        load_medmnist("derma", "bundled")
    assert fetched == []


def site_config(tmp_path: Path, data_root: str) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    if not (keys / "blood_key").exists():
        create_site_keys(keys, "blood")
    (keys / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    path = keys / "site.toml"
    path.write_text(f'site = "blood"\ndata-root = "{data_root}"\nsuperlink = "127.0.0.1:8000"\n'
                    'root-certificates = "ca.crt"\nprivate-key = "blood_key"\n')
    return path


def test_a_dry_run_refuses_a_node_without_its_data_and_creates_nothing(tmp_path, monkeypatch, capsys, fetched):
    monkeypatch.setenv("MEDMNIST_ROOT", str(copy_of_sample(tmp_path / "env", "bloodmnist")))
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    for root, problem in ((missing, f"data folder {missing} does not exist"),
                          (empty, f"bloodmnist.npz is not in the data folder {empty}")):
        path = site_config(tmp_path, str(root))
        before = tree(tmp_path)
        assert main(["site", "start", str(path), "--dry-run"]) == 2
        out = capsys.readouterr().out
        assert f"site blood cannot read its data: {problem}" in " ".join(out.split())
        assert "flower-supernode" not in out and tree(tmp_path) == before
    assert fetched == []


def test_a_dry_run_of_the_download_root_says_what_it_would_fetch(tmp_path, monkeypatch, capsys, fetched):
    nowhere = tmp_path / "not-yet"
    monkeypatch.setenv("MEDMNIST_ROOT", str(nowhere))
    assert main(["site", "start", str(site_config(tmp_path, "")), "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"bloodmnist is not in {nowhere} yet: the site downloads it there when it starts" in out
    assert fetched == [] and not nowhere.exists()
    config = SiteNodeConfig.from_file(site_config(tmp_path, ""))
    assert check_site(config) == f"bloodmnist downloaded from MedMNIST into {nowhere}"  # a real start fetches it
    assert fetched == [("bloodmnist", 28, nowhere)]


def test_a_dry_run_in_a_fresh_process_leaves_the_home_folder_alone(tmp_path):
    """medmnist's info module creates ~/.medmnist when it runs: a dry run must not run that line."""
    home = tmp_path / "home"
    home.mkdir()
    path = site_config(tmp_path, str(copy_of_sample(tmp_path / "files", "bloodmnist")))
    env = {k: v for k, v in os.environ.items() if k != "MEDMNIST_ROOT"} | {"HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", "import sys; from fl_medlego.cli import main; "
                           f"sys.exit(main(['site', 'start', {str(path)!r}, '--dry-run']))"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"bloodmnist from {tmp_path / 'files'}" in " ".join(done.stdout.split())
    assert not (home / ".medmnist").exists()
