"""`fl-medlego evaluate` asks the site kind whether it saves adapters, and lets our own faults surface as faults."""

import pytest

from cli import main
from cli.evaluate import read_site_adapter
from fl_medlego import lora
from fl_medlego.config import parse_run_config
from fl_medlego.errors import UserError
from fl_medlego.kinds import get_kind, list_kinds
from fl_medlego.kinds.adapter import AdapterServer
from fl_medlego.scenario import load_scenario_config

SCENARIO = "scenarios/cross_domain"


def test_every_kind_says_whether_its_updates_are_adapters():
    shipped = {"adapter": True, "cross-modal": True, "full": False}  # a test's toy kind may be registered too
    assert shipped.keys() <= set(list_kinds())
    assert {name: get_kind(name).saves_adapters for name in shipped} == shipped


def test_a_kind_without_adapters_is_refused_in_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--scenario", SCENARIO, "--site", "blood",
                 "--run-config", "strategy='vit_avg'"]) == 2
    assert "(kind 'full') do not train adapters" in capsys.readouterr().out


def test_a_fault_in_our_own_codec_is_not_reported_as_the_users_mistake(tmp_path, monkeypatch):
    def broken_encode(self, update):
        raise KeyError("a bug in the codec")

    monkeypatch.setattr(lora, "load_adapter", lambda folder, **expected: object())
    monkeypatch.setattr(AdapterServer, "encode", broken_encode)
    cfg = parse_run_config({**load_scenario_config(SCENARIO), "model.pretrained": "none"})
    with pytest.raises(KeyError, match="a bug in the codec") as raised:
        read_site_adapter(tmp_path, cfg.kind_server(), cfg.kind_context())
    assert not isinstance(raised.value, UserError)
