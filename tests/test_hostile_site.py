"""A site that sends its low-rank factors x10^6.5 among honest ones (B, E and A each: its update x1e19.5):
the guard keeps the honest sites' merged ACC."""

import json

import pytest

from message_federation import run, scaled_reply

TINY = {"sites": "breast,pneumonia,blood", "num-rounds": 2, "train.local-epochs": 1, "data.max-train": 64,
        "data.max-eval": 64, "lora.rank": 2, "min-sites": 2}  # a rejected site must not fail round 1


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory):
    """The run without the hostile scaling, once for both actions: the guard touches no honest update in it,
    so guard.action cannot change it."""
    strategy = run(TINY, tmp_path_factory.mktemp("honest"))
    events = [json.loads(line) for line in (strategy.results.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] == "guard"] == []
    return strategy


@pytest.mark.training
@pytest.mark.parametrize("action", ["clip", "reject"])
def test_honest_sites_keep_their_accuracy_next_to_a_hostile_one(tmp_path, honest_run, action):
    attacked = run({**TINY, "guard.action": action}, tmp_path / "attacked",
                   tamper={"blood": scaled_reply(10 ** 6.5)})
    for site in ("breast", "pneumonia"):
        before, after = honest_run.merged[site]["acc"], attacked.merged[site]["acc"]
        print(f"{action}: {site} merged ACC without the hostile site's scaling {before:.3f}, with it {after:.3f}")
        assert abs(after - before) <= 0.01, (site, before, after)
    assert attacked.status["blood"]["state"] == ("merged" if action == "clip" else "rejected")


@pytest.mark.flower
@pytest.mark.slow
def test_a_real_run_with_a_site_sending_its_update_x1e13(tmp_path):
    """The same tiny run through Flower twice: honest, and with tests/hostile_app (site blood's factors x10^6.5)."""
    from pathlib import Path

    from fl_medlego.cli.flower_run import flwr_run, local_flower

    config = ("sites='breast,pneumonia,blood' num-rounds=2 train.local-epochs=1 data.max-train=64 "
              "data.max-eval=64 lora.rank=2")
    accs = {}
    for name, app in (("honest", "cross_domain"), ("hostile", str(Path(__file__).parent / "hostile_app"))):
        out = tmp_path / name
        with local_flower(tmp_path / f"flwr-{name}") as env:
            result = flwr_run(env, app, f"{config} output-dir='{out}'", timeout_s=600)
        assert result["run"].get("status") == "finished:completed", result["log"][-3000:]
        (run_dir,) = out.iterdir()
        summary = json.loads((run_dir / "summary.json").read_text())
        accs[name] = {s: summary["sites"][s]["merged"]["acc"] for s in ("breast", "pneumonia")}
        if name == "hostile":
            guard = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                     if '"guard"' in line]
            assert guard and all(e["site"] == "blood" and e["action"] == "clipped" for e in guard)
    print(f"honest sites' merged ACC: {accs}")
    for site in ("breast", "pneumonia"):
        assert abs(accs["hostile"][site] - accs["honest"][site]) <= 0.01, accs
