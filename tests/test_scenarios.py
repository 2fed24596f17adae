"""The other scenarios: a real `flwr run` of new_task (curves) and many_sites (mixed ranks, marked slow)."""

import json

import pytest

from fl_medlego.cli.flower_run import flwr_run, local_flower
from fl_medlego.scenario import load_scenario_config


@pytest.mark.parametrize("scenario", ["cross_domain", "cross_modal", "in_domain", "new_task", "many_sites"])
def test_every_scenario_declares_every_knob(scenario):
    from fl_medlego.config import DEFAULTS, parse_run_config

    declared = load_scenario_config(f"scenarios/{scenario}")
    missing = sorted(set(DEFAULTS) - set(declared) - {"new-task.site", "new-task.epochs"})
    assert not missing
    parse_run_config(declared)


# What each scenario means to change from the library's defaults; any other difference is drift.
INTENDED = {
    "cross_domain": {},
    "cross_modal": {"kind": "cross-modal"},
    "in_domain": {"sites": "pneumonia:3", "data.partition": "dirichlet"},
    "new_task": {"new-task.site": "pneumonia"},
    "many_sites": {"sites": "blood:16,organa:16,pneumonia:16,breast:4", "num-rounds": 2, "lora.site-ranks": "2,4,8",
                   "train.local-epochs": 2},
}


@pytest.mark.parametrize("scenario", sorted(INTENDED))
def test_scenario_values_differ_from_the_defaults_only_where_meant(scenario):
    from fl_medlego.config import DEFAULTS

    declared = load_scenario_config(f"scenarios/{scenario}")
    differs = {k: v for k, v in declared.items() if k in DEFAULTS and v != DEFAULTS[k]}
    assert differs == INTENDED[scenario], "a scenario's value drifted from fl_medlego.config.DEFAULTS"


def test_merge_defaults_are_the_same_for_flwr_run_and_the_merge_command():
    import dataclasses

    from fl_medlego.cli import build_parser
    from fl_medlego.config import parse_run_config
    from fl_medlego.merging import get_merge

    args = build_parser().parse_args(["merge", "a", "-o", "b"])
    assert args.energy is None and args.max_rank is None  # the command leaves the defaults to the options type
    library = dataclasses.asdict(get_merge("medlego").make_options())
    for scenario in INTENDED:
        options = parse_run_config(load_scenario_config(f"scenarios/{scenario}")).merge.options
        assert dataclasses.asdict(options) == library


@pytest.mark.flower
def test_new_task_scenario_writes_learning_curves(tmp_path):
    out = tmp_path / "outputs"
    config = (f"sites='breast,pneumonia,blood' num-rounds=1 train.local-epochs=1 data.max-train=40 "
              f"data.max-eval=40 lora.rank=2 new-task.site='breast' new-task.epochs=2 output-dir='{out}'")
    with local_flower(tmp_path) as env:
        result = flwr_run(env, "new_task", config, timeout_s=420)
    assert result["run"].get("status") == "finished:completed", result["log"][-3000:]
    (run_dir,) = out.iterdir()
    curves = json.loads((run_dir / "new_task.json").read_text())
    assert curves["site"] == "breast"
    assert set(curves["curves"]) == {"from merged adapter", "from base model"}
    assert all(len(c["test-acc"]) == 2 for c in curves["curves"].values())
    assert (run_dir / "new_task.png").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["sites"]) == {"pneumonia", "blood"}  # the held-out site is not merged


@pytest.mark.flower
@pytest.mark.slow
def test_many_sites_with_mixed_ranks_under_ray(tmp_path):
    out = tmp_path / "outputs"
    config = f"num-rounds=1 train.local-epochs=1 output-dir='{out}'"
    with local_flower(tmp_path) as env:
        result = flwr_run(env, "many_sites", config, timeout_s=1500,
                          federation_config="num-supernodes=4 client-resources-num-cpus=1")
    assert result["run"].get("status") == "finished:completed", result["log"][-3000:]
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["sites"]) == 52
