"""`compare -o DIR` with other settings than DIR's comparison is refused (its finished rows would come back
as the new run's); the same settings resume it, and other seeds are added to it."""

import json
from pathlib import Path

import pytest

from fl_medlego.cli import main
from fl_medlego.compare.run import Comparison
from fl_medlego.errors import ConfigError
from fl_medlego.scenario import load_scenario_config

SCENARIO = Path(__file__).parent.parent / "scenarios" / "cross_domain"


def started(tmp_path: Path, overrides: str = "data.max-train=20 data.max-eval=10") -> Path:
    """A comparison folder as an interrupted `compare` leaves it: its settings and one finished row."""
    comparison = Comparison(load_scenario_config(SCENARIO, overrides), ["medlego"], [0], tmp_path / "out",
                            tmp_path / "cache")
    comparison._record("medlego", 0, {"blood": {"acc": 0.5}})
    return comparison.path


def test_other_settings_are_refused_naming_the_keys_and_the_fix(tmp_path):
    path = started(tmp_path)
    before = path.read_bytes()
    other = load_scenario_config(SCENARIO, "data.max-train=30 data.max-eval=10 merge.energy=0.8")
    with pytest.raises(ConfigError, match=r"holds a comparison with other settings \(differing: data.max-train, "
                                          r"merge.energy\): use another -o folder, or the same settings"):
        Comparison(other, ["medlego"], [0], tmp_path / "out", tmp_path / "cache")
    assert path.read_bytes() == before and not (tmp_path / "cache").exists()


def test_the_same_settings_resume_and_add_seeds(tmp_path):
    path = started(tmp_path)
    again = Comparison(load_scenario_config(SCENARIO, "data.max-train=20 data.max-eval=10 seed=3"), ["medlego"],
                       [1], tmp_path / "out", tmp_path / "cache")
    assert again.results["rows"] == json.loads(path.read_text())["rows"]  # the finished row is kept
    assert again.results["seeds"] == [0, 1]


def test_the_command_line_refuses_in_one_line(tmp_path, capsys):
    path = started(tmp_path)
    before = path.read_bytes()
    code = main(["compare", str(SCENARIO), "-o", str(tmp_path / "out"), "--seed-list", "0", "--strategies", "medlego",
                 "--cache", str(tmp_path / "cache"), "--run-config", "data.max-train=40 data.max-eval=10"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 2 and "error:" in out and "(differing: data.max-train)" in out
    assert path.read_bytes() == before


@pytest.mark.parametrize(("strategy", "options"), [("task_arithmetic", {"lam": 1.0, "rank": None}),
                                                   ("medlego", {"energy": 0.8, "max_rank": None}),
                                                   ("ties", {"density": 0.5, "lam": 0.7, "rank": None})])
def test_one_shot_options_with_none_become_a_federated_rows_run_config(strategy, options):
    """A federated row runs with the options the one-shot tuning chose; an option chosen as None (keep every
    component) is left at its default, not written as 'null', which no run config parses."""
    from fl_medlego.compare.run import _options_as_run_config
    from fl_medlego.config import parse_run_config

    run_config = {**load_scenario_config(SCENARIO), "strategy": strategy}
    config = _options_as_run_config(run_config, options)
    assert "null" not in config["merge.options"]
    chosen = parse_run_config({**run_config, **config}).merge.options
    assert {k: getattr(chosen, k) for k in options} == options


def test_a_comparison_written_before_a_setting_existed_resumes_and_combines(tmp_path):
    """A setting added later (merge.part-weights, say) is missing from older results files: it counts as its
    default, which keeps the behaviour from before it; a value other than the default still differs."""
    from fl_medlego.compare.combine import combine_comparisons

    path = started(tmp_path)
    older = json.loads(path.read_text())
    for key in ("merge.part-methods", "merge.part-weights"):
        del older["settings"][key]
    path.write_text(json.dumps(older))
    again = Comparison(load_scenario_config(SCENARIO, "data.max-train=20 data.max-eval=10"), ["medlego"], [1],
                       tmp_path / "out", tmp_path / "cache")
    assert again.results["rows"] == older["rows"]
    newer = started(tmp_path / "newer")
    assert combine_comparisons([older, json.loads(newer.read_text())])["seeds"] == [0]
    with pytest.raises(ConfigError, match=r"differing: merge.part-weights"):
        Comparison(load_scenario_config(SCENARIO, "data.max-train=20 data.max-eval=10 merge.part-weights='blocks=2'"),
                   ["medlego"], [0], tmp_path / "out", tmp_path / "cache")


@pytest.mark.parametrize("strategies,energies,says", [
    (["medlego", "vit_avg"], (), "kind 'full' send whole updates without named parts"),
    (["medlego"], (0.5, 0.9), "--energy-sweep's rows are fixed combinations"),
])
def test_part_settings_a_row_cannot_take_are_refused_before_training(tmp_path, strategies, energies, says):
    run_config = load_scenario_config(SCENARIO, "data.max-train=20 data.max-eval=10 merge.part-weights='blocks.0=1|2'")
    with pytest.raises(ConfigError, match=says):
        Comparison(run_config, strategies, [0], tmp_path / "out", tmp_path / "cache", energies=energies)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
