"""Every setting is declared once (key, type, default, range, help) and parsed generically: bad values are
refused in one line naming the key, the README's table is the declarations', and each kind owns its settings."""

import re
from pathlib import Path

import pytest

from fl_medlego.config import DEFAULTS, parse_run_config, setting_groups, settings_table
from fl_medlego.errors import ConfigError, UnknownNameError
from fl_medlego.kinds import get_kind
from fl_medlego.models import check_backbone_name
from fl_medlego.settings import describe, markdown_table, parse_value, setting, settings_of

SETTINGS = [s for group in setting_groups() for s in settings_of(group)]
KEYS = [s.key for s in SETTINGS]

# Values a setting's own check refuses, for the settings whose allowed values a check decides (not a range).
REFUSED_BY_CHECK = {
    "sites": "bloood", "strategy": "medlgo", "kind": "crossmodal", "site-nodes": "blood:12",
    "model.name": "nonexistent_model", "train.device": "gpu", "guard.norm-factor": 0.5, "cross-modal.anchors": " ",
    "merge.part-methods": "text=medlgo", "merge.part-weights": "image=-1",
}


def _out_of_range(s):
    """A value of the right type outside what the declaration allows (None: it declares no limit)."""
    d = s.declaration
    if s.key in REFUSED_BY_CHECK:
        return REFUSED_BY_CHECK[s.key]
    if d.choices is not None:
        return max(d.choices) + 1 if s.type is int else "not-a-choice"
    step = 1 if s.type in (int, tuple[int, ...]) else 0.5
    value = (d.low - step if d.low is not None else d.above if d.above is not None
             else d.high + step if d.high is not None else d.below if d.below is not None else None)
    if value is not None and s.type == tuple[int, ...]:
        return str(value)
    return value


def _wrong_type(s):
    if s.type in (int, float):
        return "abc"
    if s.type is bool:
        return 1
    if s.type == tuple[int, ...]:
        return 2.5  # one integer alone is a list of one
    return 5  # text, lists of text or integers, and the settings read from text


def _refusal(key, value):
    with pytest.raises(ConfigError) as err:
        parse_run_config({key: value})
    message = str(err.value)
    assert "\n" not in message
    return message


def test_every_setting_is_declared_once_with_help():
    assert len(KEYS) == len(set(KEYS))
    assert all(s.declaration.help.strip() for s in SETTINGS)
    assert set(DEFAULTS) == set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_every_setting_refuses_a_wrong_type_by_its_key(key):
    (s,) = [s for s in SETTINGS if s.key == key]
    message = _refusal(key, _wrong_type(s))
    assert message.startswith(f"{key}="), message


@pytest.mark.parametrize("key", KEYS)
def test_every_setting_with_a_range_refuses_a_value_outside_it_by_its_key(key):
    (s,) = [s for s in SETTINGS if s.key == key]
    bad = _out_of_range(s)
    d = s.declaration
    has_limit = d.choices is not None or d.check is not None or d.parse is not None or any(
        b is not None for b in (d.low, d.high, d.above, d.below))
    assert (bad is None) == (not has_limit)
    if bad is None:
        pytest.skip(f"{key} accepts any value of its type")
    message = _refusal(key, bad)
    assert message.startswith(f"{key}="), message
    if d.check is None and d.parse is None:  # a check, or reading the text, says why in its own words
        assert d.allowed() in message, message


@pytest.mark.parametrize("key,value,says", [
    ("num-rounds", 0, ">= 1"), ("num-rounds", -2, ">= 1"), ("num-rounds", "abc", "an integer"),
    ("round-timeout", -5, "> 0"), ("node-wait-timeout", -1, "> 0"), ("merge.max-rank", -3, "0 = no cap"),
    ("data.max-train", -5, ">= 0"), ("new-task.epochs", 0, ">= 1"), ("model.name", "nonexistent_model", "timm"),
    ("data.partition", "foo", "'iid', 'dirichlet'"), ("data.dirichlet-alpha", -1, "> 0"),
    ("strategy", "medlgo", "unknown strategy"), ("merge.energy", 1.5, "<= 1"),
])
def test_the_reported_bad_values_are_refused_by_the_key_the_user_typed(key, value, says):
    message = _refusal(key, value)
    assert message.startswith(f"{key}={value!r} is refused") and says in message, message


@pytest.mark.parametrize("key,value,lookup", [
    ("model.name", "vit_tiny_patch16_22", check_backbone_name), ("kind", "crossmodal", get_kind),
])
def test_a_name_no_registry_holds_is_refused_in_the_registrys_own_words(key, value, lookup):
    with pytest.raises(UnknownNameError) as registry:
        lookup(value)
    assert f"is refused: {registry.value} (the default" in _refusal(key, value)


def test_numbers_are_strict_about_their_type():
    (rounds,) = [s for s in SETTINGS if s.key == "num-rounds"]
    (lr,) = [s for s in SETTINGS if s.key == "train.lr"]
    assert parse_value(rounds, 4.0) == 4 and isinstance(parse_value(rounds, 4.0), int)
    assert parse_value(lr, 1) == 1.0 and isinstance(parse_value(lr, 1), float)
    for bad in (2.5, True, "4", float("nan")):
        with pytest.raises(ConfigError, match="num-rounds"):
            parse_value(rounds, bad)
    with pytest.raises(ConfigError, match="train.lr"):
        parse_value(lr, False)


def test_lists_are_read_from_comma_separated_text():
    cfg = parse_run_config({"lora.site-ranks": "2, 4,8", "lora.targets": "attn.qkv,mlp.fc1"})
    assert cfg.site_ranks == (2, 4, 8) and cfg.lora.targets == ("attn.qkv", "mlp.fc1")
    assert _refusal("lora.targets", "").startswith("lora.targets=''")
    assert "lora.site-ranks" in _refusal("lora.site-ranks", "2,0")


def test_a_group_of_the_declared_kinds_is_parsed_with_its_type():
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(frozen=True)
    class Toy:
        PREFIX: ClassVar[str] = "toy."
        flag: bool = setting(False, "a switch")
        names: tuple[str, ...] = setting(("a",), "names", choices=("a", "b"))

    flag, names = settings_of(Toy)
    assert (flag.key, names.key) == ("toy.flag", "toy.names")
    assert parse_value(flag, True) is True and parse_value(names, "b,a") == ("b", "a")
    with pytest.raises(ConfigError, match=r"toy.flag=1 is refused"):
        parse_value(flag, 1)
    with pytest.raises(ConfigError, match=r"toy.names='a,c' is refused: toy.names must be one of 'a', 'b'"):
        parse_value(names, "a,c")


def test_settings_table_holds_every_setting_by_its_key_and_reads_back_the_same():
    cfg = parse_run_config({"sites": "pneumonia:3,blood", "site-nodes": "blood=12", "lora.site-ranks": "2,4",
                            "strategy": "ties", "merge.options": "density=0.5", "full.lr": 0.002})
    table = settings_table(cfg)
    assert list(table) == KEYS
    assert table["sites"] == "pneumonia:3,blood" and table["site-nodes"] == "blood=12"
    assert table["lora.site-ranks"] == "2,4" and table["full.lr"] == 0.002 and table["kind"] == "adapter"
    assert settings_table(parse_run_config(table)) == table
    assert {k: v for k, v in settings_table(parse_run_config({})).items() if k != "kind"} == {
        k: v for k, v in DEFAULTS.items() if k != "kind"}


def test_a_kind_owns_its_settings():
    from fl_medlego.crossmodal.settings import CrossModalSettings
    from fl_medlego.kinds import get_kind
    from fl_medlego.kinds.full import FullSettings

    cross = parse_run_config({"kind": "cross-modal", "cross-modal.logit-scale": 20.0})
    assert isinstance(cross.kind_settings, CrossModalSettings) and cross.kind_settings.logit_scale == 20.0
    full = parse_run_config({"strategy": "vit_avg", "full.lr": 0.002})
    assert isinstance(full.kind_settings, FullSettings)
    assert full.kind_site().train_config().lr == 0.002
    adapter = parse_run_config({"full.lr": 0.002})
    assert adapter.kind_settings is None
    # the multi-task reference of an adapter comparison
    assert adapter.kind_site(get_kind("full").name).train_config().lr == 0.002
    assert "full.lr" in _refusal("train.full-lr", 0.002)
    assert not hasattr(full, "full_lr") and not hasattr(cross, "cross_modal")


def test_the_readme_settings_table_is_the_generated_one():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    found = re.search(r"<!-- settings table: generated by `fl-medlego settings --markdown` -->\n(.*?)"
                      r"<!-- end of settings table -->", readme, re.S)
    assert found, "README.md lost its settings table markers"
    assert found.group(1) == markdown_table(setting_groups()), "run `fl-medlego settings --markdown` into README.md"


def test_the_settings_command_lists_every_setting(capsys):
    from fl_medlego.cli import main

    assert main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table(setting_groups())
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert all(row["key"] in out for row in describe(setting_groups()))
