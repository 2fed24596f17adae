"""A site that sends its update x1e13 among honest ones: the guard keeps the honest sites' merged ACC."""

import pytest
from message_federation import run, scaled_reply

TINY = {"sites": "breast,pneumonia,blood", "num-rounds": 2, "train.local-epochs": 1, "data.max-train": 64,
        "data.max-eval": 64, "lora.rank": 2}


@pytest.mark.parametrize("action", ["clip", "reject"])
def test_honest_sites_keep_their_accuracy_next_to_a_hostile_one(tmp_path, action):
    config = {**TINY, "guard.action": action, "min-sites": 2}  # a rejected site must not fail round 1
    honest = run(config, tmp_path / "honest")
    attacked = run(config, tmp_path / "attacked", tamper={"blood": scaled_reply(10 ** 6.5)})  # update x1e13
    for site in ("breast", "pneumonia"):
        before, after = honest.merged[site]["acc"], attacked.merged[site]["acc"]
        print(f"{action}: {site} merged ACC without the hostile site's scaling {before:.3f}, with it {after:.3f}")
        assert abs(after - before) <= 0.01, (site, before, after)
    assert attacked.status["blood"]["state"] == ("merged" if action == "clip" else "rejected")
