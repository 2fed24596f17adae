"""`fl-medlego merge`: saved adapters of different ranks in, a merged saved adapter out."""

import torch

from fl_medlego.cli import main
from fl_medlego.lora import Adapter, load_adapter, save_adapter
from fl_medlego.merging import merge_adapters

from conftest import random_factors


def test_merge_command_matches_the_python_call(tmp_path, rng):
    adapters = [Adapter({"m": random_factors(16, 12, r, rng)}, scale=2.0) for r in (2, 4, 3)]
    dirs = [save_adapter(a, tmp_path / f"site{i}") for i, a in enumerate(adapters)]
    code = main(["merge", "--method", "medlego", "--energy", "0.8", *map(str, dirs), "-o", str(tmp_path / "out")])
    assert code == 0
    merged = load_adapter(tmp_path / "out")
    expected = merge_adapters(adapters, "medlego", energy=0.8)
    torch.testing.assert_close(merged.factors["m"].delta(), expected.factors["m"].delta())
    assert merged.metadata["merge"]["method"] == "medlego"


def test_merge_command_refuses_to_overwrite_and_names_bad_input(tmp_path, rng, capsys):
    save_adapter(Adapter({"m": random_factors(4, 4, 1, rng)}), tmp_path / "a")
    assert main(["merge", str(tmp_path / "a"), "-o", str(tmp_path / "a")]) == 2
    assert "already holds an adapter" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "nope"), "-o", str(tmp_path / "b")]) == 2
    assert "adapter_config.json" in capsys.readouterr().out
    assert main(["merge", "--method", "nope", str(tmp_path / "a"), "-o", str(tmp_path / "c")]) == 2
    assert "known merge methods" in capsys.readouterr().out
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_merge_list_shows_methods(capsys):
    assert main(["merge", "--list"]) == 0
    out = capsys.readouterr().out
    assert "medlego" in out and "lora_avg" in out
