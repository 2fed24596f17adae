"""One error type for unknown names, and a command line that tells a user's mistake (exit 2, one line) from
fl-medlego's own fault (exit 1, the traceback)."""

import argparse

import pytest

import fl_medlego
from fl_medlego.cli import build_parser, main
from fl_medlego.data import canonical_flag, partition
from fl_medlego.errors import UnknownNameError, UserError
from fl_medlego.kinds import get_kind, kind_for_strategy, list_kinds
from fl_medlego.lora import Adapter, save_adapter
from fl_medlego.merging import get_merge, list_merges
from fl_medlego.models import create_backbone, list_presets
from fl_medlego.pretrain import RECIPES, get_recipe
from fl_medlego.pretrain.objectives import OBJECTIVES, build_objective
from fl_medlego.privacy import ACCOUNTANTS, epsilon_of

from conftest import random_factors

# Each registry: how to look a name up, and names it must list when the name is unknown.
REGISTRIES = {
    "merge method": (get_merge, list_merges()),
    "site kind": (get_kind, list_kinds()),
    "strategy": (kind_for_strategy, ["medlego", "ties", "vit_avg"]),
    "backbone preset": (create_backbone, list_presets()),
    "pretraining recipe": (get_recipe, list(RECIPES)),
    "pretraining objective": (lambda name: build_objective(name, None, None), list(OBJECTIVES)),
    "MedMNIST 2D set": (canonical_flag, ["blood", "pneumonia", "organa"]),
    "partition scheme": (lambda name: partition([0, 1, 0], 2, name, 0.5, 0), ["iid", "dirichlet"]),
    "privacy accountant": (lambda name: epsilon_of([], 1e-5, name), list(ACCOUNTANTS)),
}


@pytest.mark.parametrize("what", sorted(REGISTRIES))
def test_every_registry_raises_unknown_name_error_listing_the_known_names(what):
    lookup, known = REGISTRIES[what]
    with pytest.raises(UnknownNameError) as caught:
        lookup("no_such_name")
    err = caught.value
    assert isinstance(err, UserError) and err.what == what and err.name == "no_such_name"
    assert str(err).startswith(f"unknown {what} 'no_such_name'")
    assert set(known) <= set(err.known) and all(name in str(err) for name in known)


def test_a_backbone_typo_also_suggests_timm_names():
    with pytest.raises(UnknownNameError, match="or any timm model name such as vit_small_patch16_224"):
        create_backbone("vit_smal_patch16_224")


def test_the_cli_reports_a_user_error_in_one_line_with_exit_2(tmp_path, capsys):
    assert main(["merge", "--method", "nope", str(tmp_path / "a"), "-o", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unknown merge method 'nope'" in lines[0]
    assert "Traceback" not in captured.out + captured.err


def _user_error_line(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(("argv", "names"), [
    (["merge", "no-such-adapter-folder", "-o", "out"], "adapter_config.json"),  # a folder the user named
    (["report", "no-such-run-folder"], "holds neither results.json"),
    (["compare", "no-such-scenario"], "pass a scenario folder"),
    (["combine", "no-such-comparison", "-o", "out"], "no-such-comparison"),
    (["edit", "no-such-generalist", "--show"], "no editable assembly"),
])
def test_a_missing_file_the_user_named_is_exit_2_not_a_traceback(argv, names, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert names in _user_error_line(argv, capsys)


def test_a_merge_the_adapters_refuse_is_exit_2(tmp_path, rng, capsys):
    folders = [str(save_adapter(Adapter({"m": random_factors(4, 4, r, rng)}), tmp_path / f"s{r}")) for r in (1, 2)]
    line = _user_error_line(["merge", *folders, "-o", str(tmp_path / "w"), "--weights", "1,2,3"], capsys)
    assert "3 merge weights for 2 adapters" in line
    line = _user_error_line(["merge", "--method", "lora_avg", *folders, "-o", str(tmp_path / "r")], capsys)
    assert "same rank" in line
    line = _user_error_line(["merge", *folders, "-o", str(tmp_path / "o"), "-O", "energy=2"], capsys)
    assert "energy" in line
    assert not any((tmp_path / name).exists() for name in ("w", "r", "o"))


def test_a_bad_option_value_is_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["merge", "a", "-o", "b", "--weights", "1,x"])
    assert done.value.code == 2 and "must be comma-separated numbers" in capsys.readouterr().err


def test_an_internal_fault_shows_its_traceback_and_exits_1(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("a bug of ours")

    import fl_medlego.cli as cli

    monkeypatch.setattr(cli, "cmd_report", broken)
    assert main(["report", "anything"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug of ours" in err and "internal error, please report it" in err


def test_a_key_error_is_no_longer_taken_for_a_user_mistake(monkeypatch, capsys):
    def broken(args):
        return {}["missing"]

    import fl_medlego.cli as cli

    monkeypatch.setattr(cli, "cmd_report", broken)
    assert main(["report", "anything"]) == 1
    assert "KeyError" in capsys.readouterr().err


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"fl-medlego {fl_medlego.__version__}"


def _options(parser: argparse.ArgumentParser, path: str = "fl-medlego"):
    """Every option of every (sub)command, with its command's path."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif action.option_strings:
            yield path, action, parser


def test_every_option_shows_its_default_in_the_help():
    undocumented = []
    for path, action, parser in _options(build_parser()):
        if action.required or isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                                  argparse._StoreTrueAction)):
            continue
        formatter = parser._get_formatter()
        text = formatter._expand_help(action) if action.help else ""
        if "(default" not in text and "no default" not in text:
            undocumented.append(f"{path} {action.option_strings[-1]}")
    assert not undocumented, f"options whose help shows no default: {undocumented}"


def test_help_shows_a_default_argparse_knows():
    help_text = build_parser()._subparsers._group_actions[0].choices["pretrain-base"].format_help()
    assert "(default: 1000)" in " ".join(help_text.split())  # --steps
