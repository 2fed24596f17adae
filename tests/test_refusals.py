"""A run the user's settings cannot make is refused in one line that names the key, in-process and under flwr run."""

import pytest
from flwr.app import Context, RecordDict

from fl_medlego.clients.app import app as site_app
from fl_medlego.server.app import RunRefused
from fl_medlego.server.app import main as server_main
from fl_medlego.server.inprocess_grid import InProcessGrid

TINY = {"sites": "blood,breast", "num-rounds": 1, "train.local-epochs": 1, "data.max-train": 16, "data.max-eval": 16}


@pytest.mark.parametrize("bad,named", [({"strategy": "medlgo"}, "strategy='medlgo' is refused"),
                                       ({"merge.energy": 1.5}, "merge.energy=1.5 is refused"),
                                       ({"merge.part-weights": "blocs=2"}, "merge.part-weights is refused: merge "
                                        "part(s) ['blocs'] name no adapted matrix"),
                                       ({"merge.part-weights": "blocks=1|2"}, "merge.part-weights gives several")])
def test_the_server_app_refuses_a_bad_setting_in_one_unchained_line(tmp_path, capsys, bad, named):
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={**TINY, **bad, "output-dir": str(tmp_path / "out")})
    with pytest.raises(RunRefused) as refused:
        server_main(InProcessGrid(site_app, {}), context)  # the ServerApp's main, as Flower calls it
    message = str(refused.value)
    assert message.startswith(named) and "\n" not in message
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no chained traceback
    assert f"fl-medlego: the run was refused: {named}" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # refused before any run folder or training


@pytest.mark.flower
def test_flwr_run_ends_a_refused_run_failed_with_the_key_in_its_last_line(tmp_path):
    from fl_medlego.cli.flower_run import flwr_run, local_flower

    with local_flower(tmp_path) as env:
        result = flwr_run(env, "cross_domain", "strategy='medlgo'", timeout_s=300)
    assert result["run"].get("status") == "finished:failed"
    assert "fl-medlego: the run was refused: strategy='medlgo' is refused" in result["log"]
    assert "During handling of the above exception" not in result["log"]
