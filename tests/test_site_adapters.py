"""A site keeps its adapters as adapter folders in its node-local state: `fl-medlego merge` takes them, and
`fl-medlego evaluate` scores what comes out on a site's data."""

from __future__ import annotations

import json

import pytest
import torch

from cli import main
from fl_medlego.cli.local_run import run_local_federation
from fl_medlego.clients.state import latest_adapter, load_state, save_state, specialist_adapter
from fl_medlego.config import parse_run_config
from fl_medlego.kinds import SiteState
from fl_medlego.lora import load_adapter
from fl_medlego.lora.io import read_adapter_config
from fl_medlego.scenario import load_scenario_config

SCENARIO = "scenarios/cross_domain"
TINY = ("sites='blood,pneumonia' num-rounds=1 train.local-epochs=1 data.max-train=40 data.max-eval=40 lora.rank=2 "
        "train.device='cpu'")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-round run of two tiny sites: (its node-local state folder of the run, a folder for outputs)."""
    tmp = tmp_path_factory.mktemp("site-adapters")
    config = {**load_scenario_config(SCENARIO, TINY), "output-dir": str(tmp / "out")}
    run_local_federation(config, tmp / "state")
    (run_state,) = (tmp / "state").iterdir()
    return run_state, tmp


def test_a_run_leaves_each_sites_specialist_as_a_self_describing_adapter_folder(finished_run):
    run_state, _ = finished_run
    cfg = parse_run_config(load_scenario_config(SCENARIO, TINY))
    fingerprint = cfg.kind_server().shared_base()[1]
    for site in ("blood", "pneumonia"):
        folder = specialist_adapter(run_state, site)
        config = read_adapter_config(folder)
        assert config["base_model_name_or_path"] == "vit_medmnist_28"
        assert config["base_model_fingerprint"] == fingerprint
        assert config["svd_lora"]["targets"] == ["attn.qkv"] and set(config["ranks"].values()) == {2}
        # the same adapter the site keeps as its specialist (the state's own copy)
        server = cfg.kind_server()
        kept = load_state(run_state, site, 1, server, server.template()).specialist
        saved = load_adapter(folder, expect_lora=cfg.kind_context().lora, expect_fingerprint=fingerprint)
        assert kept.factors.keys() == saved.factors.keys()
        for name, f in kept.folded().items():
            assert torch.allclose(f.delta(), saved.folded()[name].delta(), rtol=1e-6, atol=1e-8)


def test_merge_accepts_two_site_adapters_and_evaluate_scores_the_result(finished_run, capsys):
    run_state, tmp = finished_run
    merged = tmp / "merged"
    assert main(["merge", f"blood={specialist_adapter(run_state, 'blood')}",
                 f"pneumonia={specialist_adapter(run_state, 'pneumonia')}", "-o", str(merged)]) == 0
    assert read_adapter_config(merged)["metadata"]["merge"]["sites"] == ["blood", "pneumonia"]
    capsys.readouterr()
    assert main(["evaluate", str(merged), "--scenario", SCENARIO, "--site", "blood", "--run-config", TINY,
                 "--head-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "on site blood (test split, a head trained 1 epochs on the frozen adapter)" in out
    acc = float(out.split("ACC ")[1].split(",")[0])
    assert 0.0 <= acc <= 1.0 and "AUC " in out and "F1 " in out


def test_evaluate_with_the_sites_own_head_gives_the_runs_specialist_numbers(finished_run, capsys):
    run_state, tmp = finished_run
    (run_dir,) = (tmp / "out").iterdir()
    reported = json.loads((run_dir / "summary.json").read_text())["sites"]["pneumonia"]["specialist"]
    head = run_state / "pneumonia" / "specialist" / "specialist-head.safetensors"
    capsys.readouterr()
    assert main(["evaluate", str(specialist_adapter(run_state, "pneumonia")), "--scenario", SCENARIO,
                 "--site", "pneumonia", "--run-config", TINY, "--head", str(head)]) == 0
    out = capsys.readouterr().out
    assert f"ACC {reported['acc']:.4f}" in out and f"F1 {reported['f1']:.4f}" in out


def test_evaluate_refuses_an_adapter_for_other_targets_another_site_and_a_foreign_head(finished_run, capsys):
    run_state, _ = finished_run
    blood = str(specialist_adapter(run_state, "blood"))
    other_targets = TINY + " lora.targets='mlp.fc1'"
    assert main(["evaluate", blood, "--scenario", SCENARIO, "--site", "blood", "--run-config", other_targets]) == 2
    assert "adapts ['attn.qkv'], but it is being loaded for targets ['mlp.fc1']" in capsys.readouterr().out
    assert main(["evaluate", blood, "--scenario", SCENARIO, "--site", "derma", "--run-config", TINY]) == 2
    assert "site 'derma' is not one of the scenario's sites (blood, pneumonia)" in capsys.readouterr().out
    foreign = str(run_state / "pneumonia" / "specialist" / "specialist-head.safetensors")  # 2 classes, blood has 8
    assert main(["evaluate", blood, "--scenario", SCENARIO, "--site", "blood", "--run-config", TINY,
                 "--head", foreign]) == 2
    assert "is not a head of site 'blood'" in capsys.readouterr().out
    assert main(["evaluate", str(run_state), "--scenario", SCENARIO, "--site", "blood", "--run-config", TINY]) == 2
    assert "adapter_config.json not found" in capsys.readouterr().out


def test_the_round_adapter_is_kept_beside_its_head_and_an_older_specialist_gets_its_folder(finished_run, tmp_path):
    run_state, _ = finished_run
    cfg = parse_run_config(load_scenario_config(SCENARIO, TINY))
    server = cfg.kind_server()
    state = load_state(run_state, "blood", 1, server, server.template())
    # a specialist folder as earlier versions wrote it: its two safetensors files, no adapter folder
    old = tmp_path / "blood" / "specialist"
    old.mkdir(parents=True)
    for name in ("specialist.safetensors", "specialist-head.safetensors"):
        (old / name).write_bytes((run_state / "blood" / "specialist" / name).read_bytes())
    save_state(tmp_path, "blood", 2, server, SiteState(state.head, state.specialist, state.specialist_head),
               update=state.specialist, base_fingerprint="f" * 16)
    assert read_adapter_config(specialist_adapter(tmp_path, "blood"))["base_model_fingerprint"] == "f" * 16
    assert latest_adapter(tmp_path, "blood") == tmp_path / "blood" / "round-002" / "adapter"
    assert (tmp_path / "blood" / "round-002" / "head.safetensors").is_file()
    assert not list(tmp_path.glob("blood/*.tmp"))
    assert load_state(tmp_path, "blood", 2, server, server.template()) is not None  # the old layout still loads
