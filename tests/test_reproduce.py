"""The default scenario, same seed, gives the numbers stored before the site-kind redesign.

tests/data/default_scenario_summary.json is the summary of a real `flwr run scenarios/cross_domain`
(defaults, bundled sample) on the code before the redesign. The `training` test runs the real ServerApp and
ClientApp code in this process (fl_medlego.cli.local_run: discovery, the strategy's rounds with its guard and
weighting, the summary; about four to six minutes on two cores); the slow one runs it through Flower.
"""

import json
from pathlib import Path

import pytest

from fl_medlego.cli.flower_run import flwr_run, local_flower
from fl_medlego.cli.local_run import run_local_federation
from fl_medlego.scenario import load_scenario_config

STORED = json.loads((Path(__file__).parent / "data" / "default_scenario_summary.json").read_text())
# float32 training on the CPU: the same seed gives the same numbers up to summation order, which differs between
# CPUs. On a second machine one pair of breast's test images swapped places in the merged AUC (2.1e-4, the same
# on the code that stored these numbers); 1e-3 allows that, while a real change to training moves them by far more.
TOLERANCE = 1e-3


def assert_matches_stored(sites: dict) -> None:
    assert set(sites) == set(STORED["sites"])
    for site, stored in STORED["sites"].items():
        for part in ("specialist", "merged"):
            for metric, value in stored[part].items():
                assert sites[site][part][metric] == pytest.approx(value, abs=TOLERANCE), (site, part, metric)


@pytest.mark.training
def test_the_default_scenario_reproduces_the_stored_summary(tmp_path):
    config = {**load_scenario_config("scenarios/cross_domain"), "output-dir": str(tmp_path / "outputs")}
    fed = run_local_federation(config, tmp_path / "state")
    summary = json.loads((fed.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert_matches_stored(summary["sites"])
    assert summary["mean_normalized_acc"] == pytest.approx(STORED["mean_normalized_acc"], abs=TOLERANCE)


@pytest.mark.flower
@pytest.mark.slow
def test_flwr_run_of_the_default_scenario_reproduces_the_stored_summary(tmp_path):
    out = tmp_path / "outputs"
    with local_flower(tmp_path) as env:
        result = flwr_run(env, "cross_domain", f"output-dir='{out}'", timeout_s=1200)
    assert result["run"].get("status") == "finished:completed", result["log"][-3000:]
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert_matches_stored(summary["sites"])
    assert summary["mean_normalized_acc"] == pytest.approx(STORED["mean_normalized_acc"], abs=TOLERANCE)
    assert "site blood: epoch 5/5" in result["log"]  # sites' progress is streamed as they train
