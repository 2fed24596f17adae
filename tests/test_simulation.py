"""One short real `flwr run` of the cross_domain scenario on the local simulation (Ray backend)."""

import json

import pytest

from flower_run import flwr_run, local_flower


@pytest.mark.parametrize("strategy", ["medlego", "vit_avg"])
def test_two_tiny_sites_complete_a_flower_simulation(tmp_path, strategy):
    out = tmp_path / "outputs"
    config = (f"sites='breast,pneumonia' num-rounds=2 train.local-epochs=1 data.max-train=48 data.max-eval=48 "
              f"lora.rank=2 strategy='{strategy}' output-dir='{out}'")
    with local_flower(tmp_path) as env:
        result = flwr_run(env, "cross_domain", config, timeout_s=420)
    assert result["run"].get("status") == "finished:completed", result["log"][-3000:]
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["sites"]) == {"breast", "pneumonia"}
    for site in summary["sites"].values():
        assert 0 <= site["merged"]["acc"] <= 1 and 0 <= site["specialist"]["acc"] <= 1
        assert site["merged"]["round"] == 2
    saved = "backbone.safetensors" if strategy == "vit_avg" else "adapter/adapter_model.safetensors"
    assert (run_dir / "round-002" / saved).is_file()
    assert "normalized ACC" in (run_dir / "summary.md").read_text()
