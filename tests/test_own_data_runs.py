"""A site with its own images in real runs: `flwr run` with a MedMNIST site beside a folder site, and the loopback
deployment with a SuperNode that names its registered dataset. The images are a MedMNIST export, so each site's
numbers can be checked against the same run with the `.npz`."""

import json
import os
import shutil
import subprocess

import pytest

from fl_medlego import processes
from fl_medlego.cli import loopback, main
from fl_medlego.cli.flower_run import BIN, REPO, flwr_run, local_flower

TINY = "num-rounds=2 train.local-epochs=1 data.max-train=48 data.max-eval=48 lora.rank=2"


def _folder_export(tmp_path):
    """blood as ROOT/{train,val,test}/<class>/<files> (a folder dataset), from the manifest export."""
    assert main(["data", "export", "blood", "--to", str(tmp_path / "export")]) == 0
    folder = tmp_path / "smears"
    names = (tmp_path / "export" / "classes.txt").read_text().split("\n")
    import csv

    with open(tmp_path / "export" / "manifest.csv") as f:
        for row in csv.DictReader(f):
            # a numbered prefix keeps MedMNIST's class order, which folder datasets sort by name
            target = folder / row["split"] / f"{names.index(row['label'])}-{row['label']}" / row["path"].split("/")[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "export" / row["path"], target)
    return folder


@pytest.mark.flower
def test_a_flower_simulation_mixes_a_medmnist_site_and_a_folder_site(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_MEDLEGO_CACHE", str(tmp_path / "cache"))
    folder = _folder_export(tmp_path)
    out = tmp_path / "outputs"
    config = f"sites='breast,smears=folder:{folder}' {TINY} output-dir='{out}'"
    with local_flower(tmp_path) as env:
        result = flwr_run(env, "cross_domain", config, timeout_s=420)
    assert result["run"].get("status") == "finished:completed", result["log"][-3000:]
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["sites"]) == {"breast", "smears"} and summary["status"] == "completed"
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sources = {e["site"]: e["data_source"] for e in events if e["event"] == "train"}
    assert sources["smears"] == "own folder dataset: 1050 images, 8 classes"  # no path leaves the site
    assert str(folder) not in (run_dir / "metrics.jsonl").read_text() + (run_dir / "summary.json").read_text()
    assert summary["sites"]["smears"]["merged"]["acc"] > 0.0


@pytest.mark.deployment
def test_a_supernode_names_its_registered_dataset_in_the_loopback_deployment(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_MEDLEGO_DATASETS", str(tmp_path / "registry"))  # inherited by the SuperNodes
    monkeypatch.setenv("FL_MEDLEGO_CACHE", str(tmp_path / "cache"))
    folder = _folder_export(tmp_path)
    assert main(["site", "data", "add", "smears", "--source", "folder", "--path", str(folder)]) == 0
    workdir = tmp_path / "federation"
    state = loopback.up(workdir, ["breast", "smears"], datasets={"smears": "smears"})
    try:
        assert "own folder dataset: 1050 images" in state["sites"]["smears"]["data_source"]
        out = workdir / "outputs"
        config = f"sites='breast,smears' {TINY} node-wait-timeout=30 output-dir='{out}'"
        env = {**os.environ, "FLWR_HOME": state["flwr_home"], "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        run = subprocess.run([str(BIN / "flwr"), "run", str(REPO / "scenarios" / "cross_domain"), "--stream",
                              "--run-config", config], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        (run_dir,) = out.iterdir()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed", run.stdout[-3000:]
        assert set(summary["sites"]) == {"breast", "smears"}
        assert all(s["merged"]["round"] == 2 for s in summary["sites"].values())
    finally:
        pids = [e["pid"] for e in [*state["sites"].values(), state["superlink"]] if e.get("pid")]
        family = pids + [d for p in pids for d in processes.descendants(p)]
        loopback.down(workdir)
        assert not [p for p in family if processes.is_alive(p)], "a process of the federation outlived `down`"
