"""A kind is one module: a toy kind defined in tests/toy_kind.py (its own settings, metrics and report column)
runs through a real round (the ServerApp and the ClientApp in-process), the run summary and a comparison,
without any other file knowing its name."""

import json

import pytest
import toy_kind

from fl_medlego.cli.local_run import run_local_federation
from fl_medlego.compare import Comparison
from fl_medlego.config import parse_run_config
from fl_medlego.kinds import register_kind, unregister_kind

RUN = {"kind": toy_kind.NAME, "strategy": toy_kind.STRATEGY, "sites": "breast,pneumonia", "num-rounds": 2,
       "data.max-train": 40, "data.max-eval": 40, "train.local-epochs": 1, "lora.rank": 2, "toy.shift": 0.5}


@pytest.fixture(scope="module", autouse=True)
def toy():
    register_kind(toy_kind.ToyKind)
    yield
    unregister_kind(toy_kind.NAME)  # the other tests see the shipped kinds only


def test_the_toy_kind_is_configured_from_its_own_group():
    cfg = parse_run_config(RUN)
    assert cfg.kind.name == toy_kind.NAME and cfg.kind_context().settings.shift == 0.5
    with pytest.raises(ValueError, match="toy.shift"):
        parse_run_config({**RUN, "toy.shift": -1})


def test_the_toy_kind_runs_a_real_federation_into_the_summary(tmp_path):
    federation = run_local_federation({**RUN, "output-dir": str(tmp_path / "runs")}, tmp_path / "state")
    summary = json.loads((federation.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for site in ("breast", "pneumonia"):
        merged, own = summary["sites"][site]["merged"], summary["sites"][site]["specialist"]
        assert 0.5 < merged[toy_kind.SCORE] < 1 and toy_kind.SCORE in own
    events = [json.loads(line) for line in (federation.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(toy_kind.SPREAD in json.dumps(e) for e in events)  # its own train metric reached the record
    markdown = (federation.run_dir / "summary.md").read_text()
    assert "toy score" in markdown and "Toy kind: its own score." in markdown
    combined = parse_run_config(RUN).kind_server().load(federation.run_dir / "round-002", None)
    assert combined.shape == (toy_kind.SIZE,)


def test_the_toy_kind_gets_a_one_shot_row_in_a_comparison(tmp_path):
    results = Comparison(RUN, [toy_kind.STRATEGY], [0], tmp_path / "out", tmp_path / "cache").run()
    row = results["rows"][toy_kind.STRATEGY]["0"]["test"]
    assert set(row) == {"breast", "pneumonia"} and all(toy_kind.SCORE in m for m in row.values())
    table = (tmp_path / "out" / "table.md").read_text()
    assert "## Toy" in table and "toy score" in table
