"""What a user reads: `edit --show`, `report`, progress bars named by site, and setup.sh's word on the shared venv."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import torch

from cli import main
from fl_medlego.lora import Adapter, SVDLoRAConfig, save_adapter
from fl_medlego.train import TrainConfig, fit

from conftest import random_factors

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"blocks.0.attn.qkv.q": (24, 20), "blocks.0.attn.qkv.v": (24, 20)}


def _site(rng, root: Path, name: str) -> Path:
    adapter = Adapter({n: random_factors(o, i, 3, rng) for n, (o, i) in SHAPES.items()}, scale=1.0)
    return save_adapter(adapter, root / name, SVDLoRAConfig(rank=3), "vit_medmnist_28", "f00d")


def test_edit_show_lists_weights_and_dated_edits(rng, tmp_path, capsys):
    sites = {name: _site(rng, tmp_path / "sites", name) for name in ("blood", "organa", "pneumonia")}
    generalist = tmp_path / "generalist"
    before = time.strftime("%Y-%m-%d")
    assert main(["merge", f"blood={sites['blood']}", f"organa={sites['organa']}", "-o", str(generalist)]) == 0
    assert main(["edit", str(generalist), "--add", f"pneumonia={sites['pneumonia']}", "--weight", "2"]) == 0
    capsys.readouterr()
    assert main(["edit", str(generalist), "--show"]) == 0
    out = capsys.readouterr().out
    assert "3 sites" in out and "uniform mean" in out and "energy 0.9, max rank 16" in out
    assert re.search(r"blood\s+weight 1 -> 0\.250 of the merge", out)
    assert re.search(r"pneumonia\s+weight 2 -> 0\.500 of the merge", out)
    dated = re.findall(r"(\d{4}-\d\d-\d\d) \d\d:\d\d:\d\d  (.*)", out)
    assert [what for _, what in dated] == ["merged blood, organa", "added pneumonia (weight 2)"]
    assert dated[0][0] >= before and "'time'" not in out  # readable, not the raw record


def _failed_run(folder: Path) -> Path:
    summary = {
        "sites": {"blood": {"specialist": {"acc": 0.8, "auc": 0.9, "f1": 0.7},
                            "merged": {"acc": 0.6, "auc": 0.8, "f1": 0.5}, "normalized_acc": 0.75}},
        "mean_normalized_acc": 0.75, "strategy": "medlego", "wall_time_s": 3.0,
        "status": "failed: round 2 combined 1 of 3 sites, fewer than min-sites requires (2)",
        "site_status": {"blood": {"state": "merged", "round": 1, "reason": ""},
                        "organa": {"state": "rejected", "round": 2, "reason": "could not load organamnist"},
                        "pneumonia": {"state": "missing", "round": 2, "reason": "no reply within round-timeout"}},
        "sites_missing": ["breast"],
    }
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_report_prints_the_table_the_status_and_each_failed_sites_reason(tmp_path, capsys):
    run = _failed_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "strategy medlego" in out and re.search(r"blood .*0\.800.*0\.600.*0\.750", out)  # the table
    assert "status: failed: round 2 combined 1 of 3 sites" in out
    assert "organa: rejected in round 2: could not load organamnist" in out
    assert "pneumonia: missing in round 2: no reply within round-timeout" in out
    assert "breast: no node hosted it" in out and "blood: merged" not in out
    assert (run / "summary.md").is_file()


def test_report_of_a_completed_run_says_so_and_a_broken_summary_is_one_line(tmp_path, capsys):
    run = _failed_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "completed", "sites_missing": []}))
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "status: completed" in out and "organa" not in out
    (run / "summary.json").write_text('{"sites": ')
    assert main(["report", str(run)]) == 2
    assert "is not valid JSON" in capsys.readouterr().out


def test_progress_bars_are_named_by_the_site(capsys):
    from fl_medlego.data.sites import Split

    gen = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 255, (8, 4, 4, 1), generator=gen, dtype=torch.uint8), torch.zeros(8, 1).long())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))  # three channels
    cfg = TrainConfig(epochs=1, batch_size=4, progress=True, device="cpu", orth_weight=0.0)
    fit(model, split, split, "multi-class", 4, cfg, name="blood")
    assert "blood: epoch 1/1" in capsys.readouterr().err


def _setup_with_fake_venv(tmp_path: Path, installed: str) -> subprocess.CompletedProcess:
    """scripts/setup.sh against a venv whose python reports `installed` as the clone it runs (pip does nothing)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    for tool, body in (("python", f"echo '{installed}'"), ("pip", "exit 0")):
        (venv / "bin" / tool).write_text(f"#!/bin/sh\n{body}\n")
        (venv / "bin" / tool).chmod(0o755)
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FL_MEDLEGO_VENV": str(venv)}, check=True)


def test_setup_warns_when_the_shared_venv_ran_another_clone(tmp_path):
    other = _setup_with_fake_venv(tmp_path, "/elsewhere/fl-medlego")
    assert f"ran the clone at /elsewhere/fl-medlego; from now on it runs {REPO}" in other.stderr
    same = _setup_with_fake_venv(tmp_path, str(REPO))
    assert "warning" not in same.stderr and f"runs the code in {REPO}" in same.stdout
