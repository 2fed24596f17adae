"""Editing a Med-LEGO generalist: adding and removing a site are exact, kept in low-rank form, and recorded."""

from __future__ import annotations

import json

import pytest
import torch

from cli import main
from fl_medlego.assembly import Assembly, edit_generalist
from fl_medlego.lora import Adapter, SVDLoRAConfig, load_adapter, save_adapter
from fl_medlego.merging import merge_adapters
from fl_medlego.merging.medlego import MedLegoOptions
from fl_medlego.offline_merge import merge_saved_adapters

from conftest import random_factors

SHAPES = {"blocks.0.attn.qkv.q": (24, 20), "blocks.0.attn.qkv.v": (24, 20), "blocks.1.mlp.fc1": (30, 12)}


def site_adapter(rng, rank: int) -> Adapter:
    return Adapter({name: random_factors(o, i, rank, rng) for name, (o, i) in SHAPES.items()}, scale=2.0 / rank)


def assert_same_update(a: Adapter, b: Adapter, tol: float = 1e-6) -> None:
    assert a.factors.keys() == b.factors.keys()
    for name in a.factors:
        x, y = a.folded()[name].delta().double(), b.folded()[name].delta().double()
        assert (x - y).abs().max() <= tol * max(y.abs().max(), 1.0), name


@pytest.fixture
def adapters(rng):
    return {name: site_adapter(rng, rank) for name, rank in (("blood", 4), ("breast", 2), ("organa", 4),
                                                             ("pneumonia", 3))}


def test_removal_gives_the_fresh_merge_without_that_site(adapters):
    options = MedLegoOptions(energy=0.9, max_rank=None)
    assembly = Assembly.from_adapters(adapters, options=options)
    without = assembly.remove("organa", adapters["organa"])
    rest = [a for name, a in adapters.items() if name != "organa"]
    assert_same_update(without.generalist(), merge_adapters(rest, "medlego", energy=0.9, max_rank=None))
    assert list(without.sites) == ["blood", "breast", "pneumonia"]
    assert without.total_rank() == 4 + 2 + 3  # the exact sum's support shrank by the removed rank


def test_adding_a_site_gives_the_fresh_merge_with_it_and_add_after_remove_restores(adapters):
    first = {k: adapters[k] for k in ("blood", "breast")}
    grown = Assembly.from_adapters(first).add("organa", adapters["organa"])
    three = [adapters[k] for k in ("blood", "breast", "organa")]
    assert_same_update(grown.generalist(), merge_adapters(three, "medlego"))
    again = grown.remove("breast", adapters["breast"]).add("breast", adapters["breast"])
    assert_same_update(again.generalist(), grown.generalist())
    assert [e["op"] for e in again.edits] == ["create", "add", "remove", "add"]


def test_the_exact_sum_is_kept_in_low_rank_form(adapters):
    assembly = Assembly.from_adapters(adapters)
    total = sum(a.factors["blocks.0.attn.qkv.q"].rank for a in adapters.values())
    for name, (d_out, d_in) in SHAPES.items():
        f = assembly.sums[name]
        assert f.B.shape == (d_out, f.rank) and f.A.shape == (f.rank, d_in) and f.rank <= total
        exact = sum((lambda g: (g.B.double() * g.E.double()) @ g.A.double())(a.folded()[name])
                    for a in adapters.values())
        torch.testing.assert_close(f.delta(), exact, rtol=1e-10, atol=1e-10)  # untruncated: the sum itself


def test_removing_with_another_adapter_is_refused(adapters, rng):
    assembly = Assembly.from_adapters(adapters)
    with pytest.raises(ValueError, match="not the adapter 'blood' contributed"):
        assembly.remove("blood", site_adapter(rng, 4))
    with pytest.raises(ValueError, match="not in this generalist"):
        assembly.remove("derma", adapters["blood"])
    with pytest.raises(ValueError, match="already in this generalist"):
        assembly.add("blood", adapters["blood"])


def _save_sites(adapters, root):
    lora = SVDLoRAConfig(rank=4)
    return {name: save_adapter(a, root / name, lora, "vit_medmnist_28", "f00d") for name, a in adapters.items()}


def test_the_edit_command_removes_and_adds_on_disk_and_records_it(adapters, tmp_path):
    folders = _save_sites(adapters, tmp_path / "sites")
    generalist = tmp_path / "generalist"
    assert main(["merge", *(f"{n}={p}" for n, p in folders.items()), "-o", str(generalist)]) == 0
    assert main(["edit", str(generalist), "--remove", f"organa={folders['organa']}"]) == 0
    edited = load_adapter(generalist, expect_fingerprint="f00d")  # still fits the base
    fresh = merge_saved_adapters([folders[k] for k in ("blood", "breast", "pneumonia")], tmp_path / "fresh")
    assert_same_update(edited, fresh)
    record = json.loads((generalist / "assembly" / "assembly.json").read_text())
    assert list(record["sites"]) == ["blood", "breast", "pneumonia"]
    assert edited.metadata["merge"]["edits"][-1]["op"] == "remove"
    assert main(["edit", str(generalist), "--add", f"organa={folders['organa']}"]) == 0
    assert_same_update(load_adapter(generalist), merge_saved_adapters(list(folders.values()), tmp_path / "all"))
    assert not (tmp_path / "generalist.edit").exists() and not (tmp_path / "generalist.old").exists()


def test_a_failed_edit_leaves_the_generalist_as_it_was(adapters, tmp_path, rng):
    folders = _save_sites(adapters, tmp_path / "sites")
    generalist = tmp_path / "generalist"
    merge_saved_adapters(list(folders.values()), generalist, names=list(folders))
    before = {p.name: p.read_bytes() for p in generalist.rglob("*") if p.is_file()}
    impostor = save_adapter(site_adapter(rng, 4), tmp_path / "impostor", SVDLoRAConfig(rank=4), "vit_medmnist_28",
                            "f00d")
    with pytest.raises(ValueError, match="fingerprint differs"):
        edit_generalist(generalist, remove={"blood": impostor})
    assert {p.name: p.read_bytes() for p in generalist.rglob("*") if p.is_file()} == before
    other_base = save_adapter(adapters["blood"], tmp_path / "other", SVDLoRAConfig(rank=4), "vit_medmnist_28", "beef")
    with pytest.raises(ValueError, match="beef"):
        edit_generalist(generalist, add={"derma": other_base})


def test_a_generalist_merged_without_its_sum_names_the_fix(adapters, tmp_path):
    folders = _save_sites(adapters, tmp_path / "sites")
    merge_saved_adapters(list(folders.values()), tmp_path / "ties", method="ties")
    with pytest.raises(FileNotFoundError, match="no editable assembly"):
        edit_generalist(tmp_path / "ties", add={"x": folders["blood"]})


def test_an_edit_keeps_the_folders_other_files_and_finishes_a_swap_cut_short(adapters, tmp_path):
    folders = _save_sites(adapters, tmp_path / "sites")
    generalist = tmp_path / "generalist"
    merge_saved_adapters(list(folders.values()), generalist, names=list(folders))
    (generalist / "NOTES.txt").write_text("approved by the ethics board")
    edit_generalist(generalist, remove={"organa": folders["organa"]})
    assert (generalist / "NOTES.txt").read_text() == "approved by the ethics board"
    # A crash between the two renames of a swap: the new version is in .edit, the old in .old.
    generalist.rename(tmp_path / "generalist.old")
    (tmp_path / "staged").mkdir()
    merge_saved_adapters([folders[k] for k in ("blood", "breast")], tmp_path / "generalist.edit",
                         names=["blood", "breast"])
    merged = edit_generalist(generalist, add={"pneumonia": folders["pneumonia"]})
    assert merged.metadata["merge"]["sites"] == ["blood", "breast", "pneumonia"]  # continued from the new version
    assert not (tmp_path / "generalist.old").exists()


def test_a_generalist_with_explicit_weights_needs_the_weight_of_a_new_site(adapters, tmp_path):
    folders = _save_sites(adapters, tmp_path / "sites")
    generalist = tmp_path / "generalist"
    three = ["blood", "breast", "organa"]
    merge_saved_adapters([folders[k] for k in three], generalist, weights=[0.5, 0.3, 0.2], names=three)
    with pytest.raises(ValueError, match="explicit weights.*pneumonia"):
        edit_generalist(generalist, add={"pneumonia": folders["pneumonia"]})
    edit_generalist(generalist, add={"pneumonia": folders["pneumonia"]}, weights={"pneumonia": 0.1})
    expected = merge_adapters([adapters[k] for k in (*three, "pneumonia")], "medlego", [0.5, 0.3, 0.2, 0.1])
    assert_same_update(load_adapter(generalist), expected)
    with pytest.raises(ValueError, match="3 merge weights for 4 adapters"):
        merge_saved_adapters(list(folders.values()), tmp_path / "other", weights=[0.5, 0.3, 0.2])
