"""One short real `flwr run` of the cross_domain scenario on the local simulation (Ray backend)."""

import json

import pytest

from fl_medlego import wire
from fl_medlego.cli.flower_run import flwr_run, local_flower
from fl_medlego.crossmodal import metrics as cm

pytestmark = pytest.mark.flower  # a real `flwr run` each (a minute or more on two cores)


def _tiny_run(tmp_path, settings: str, scenario: str = "cross_domain", timeout_s: float = 420):
    """Two tiny sites, two rounds, on a fresh local SuperLink: the completed run's folder and summary."""
    out = tmp_path / "outputs"
    config = (f"sites='breast,pneumonia' num-rounds=2 train.local-epochs=1 data.max-train=48 data.max-eval=48 "
              f"lora.rank=2 {settings} output-dir='{out}'")
    with local_flower(tmp_path) as env:
        result = flwr_run(env, scenario, config, timeout_s=timeout_s)
    assert result["run"].get("status") == "finished:completed", result["log"][-3000:]
    (run_dir,) = out.iterdir()
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def assert_summary_reports_what_the_sites_evaluated(run_dir, summary, metrics=("acc",)) -> None:
    """Each site's merged metrics are its evaluation of round 2's combined update, its specialist's the ones it
    reported in round 1 (a specialist is evaluated once), as the run's event log recorded them."""
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = {(e["round"], e["site"]): e for e in events if e["event"] == "evaluate"}
    for name, site in summary["sites"].items():
        assert site["merged"]["round"] == 2
        for metric in metrics:
            assert site["merged"][metric] == evaluated[(2, name)][metric], (name, metric)
            assert site["specialist"][metric] == evaluated[(1, name)][wire.SPECIALIST_PREFIX + metric], (name, metric)
        assert wire.SPECIALIST_PREFIX + "acc" not in evaluated[(2, name)]  # not evaluated again


@pytest.mark.parametrize("strategy", ["medlego", "vit_avg"])
def test_two_tiny_sites_complete_a_flower_simulation(tmp_path, strategy):
    run_dir, summary = _tiny_run(tmp_path, f"strategy='{strategy}'")
    assert set(summary["sites"]) == {"breast", "pneumonia"}
    assert_summary_reports_what_the_sites_evaluated(run_dir, summary)
    saved = "backbone.safetensors" if strategy == "vit_avg" else "adapter/adapter_model.safetensors"
    assert (run_dir / "round-002" / saved).is_file()
    assert "normalized ACC" in (run_dir / "summary.md").read_text()


def test_a_private_flower_simulation_states_each_sites_epsilon(tmp_path):
    """DP-SGD inside Flower's simulation (Opacus in the Ray actors): the run completes within budget and its
    summary states every site's (epsilon, delta)."""
    run_dir, summary = _tiny_run(tmp_path, "privacy.mode='dp-sgd' privacy.epsilon=4.0")
    assert summary["status"] == "completed"
    privacy = summary["privacy"]
    assert privacy["mode"] == "dp-sgd" and set(privacy["sites"]) == {"breast", "pneumonia"}
    for spent in privacy["sites"].values():
        assert 3.9 <= spent["epsilon"] <= 4.01 and spent["delta"] == pytest.approx(1e-5) and spent["round"] == 2
    assert "| breast |" in (run_dir / "summary.md").read_text().split("Privacy: dp-sgd")[1]


def test_a_cross_modal_flower_simulation_is_head_free_and_reports_the_generalist_tests(tmp_path):
    """scenarios/cross_modal in a real `flwr run`: the image side's factors travel and merge (the default
    cross-modal.towers='image'), each site scores with prompts; the merged adapter saved by the server spans the
    image tower and the projection, and the text tower stays the shared frozen one."""
    run_dir, summary = _tiny_run(tmp_path, "", scenario="cross_modal", timeout_s=480)
    assert set(summary["sites"]) == {"breast", "pneumonia"}
    assert_summary_reports_what_the_sites_evaluated(run_dir, summary,
                                                    ("acc", cm.MODALITY_SHARE, cm.UNSEEN_PREFIX + "acc"))
    config_file = json.loads((run_dir / "round-002" / "adapter" / "adapter_config.json").read_text())
    assert config_file["base_model_name_or_path"] == "vit_medmnist_28+all-MiniLM-L6-v2"
    assert {name.split(".")[0] for name in config_file["ranks"]} == {"image", "projection"}
    assert "right modality" in (run_dir / "summary.md").read_text()
