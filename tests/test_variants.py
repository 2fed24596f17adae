"""`fl-medlego variants`: comparisons with different settings side by side, paired by seed."""

import csv
import json

import pytest

from fl_medlego.cli import main
from fl_medlego.compare.variants import render_variants, variant_rows
from fl_medlego.errors import UserError


def comparison(folder, towers: str, shares: dict[int, tuple[float, float]], sites=("blood", "organa")):
    """A results.json as `compare -o` writes it: one row, two sites, the given modality shares per seed."""
    rows = {"medlego": {str(seed): {"test": {s: {"modality-share": v, "acc": 0.5} for s, v in zip(sites, pair)}}
                        for seed, pair in shares.items()}}
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"settings": {"cross-modal.towers": towers, "seed": 0},
                                                     "sites": list(sites), "rows": rows, "seeds": list(shares)}))
    return folder


def test_a_variant_is_paired_with_the_baseline_seed_by_seed(tmp_path):
    base = comparison(tmp_path / "both", "both", {0: (0.4, 0.6), 1: (0.5, 0.5), 2: (0.3, 0.5)})
    better = comparison(tmp_path / "image", "image", {0: (0.9, 0.9), 1: (0.8, 1.0), 2: (0.9, 0.8)})
    records = variant_rows({"both": json.loads((base / "results.json").read_text()),
                            "image": json.loads((better / "results.json").read_text())}, "both")
    image = next(r for r in records if r["variant"] == "image")
    assert image["modality-share"] == pytest.approx(0.8833, abs=1e-4)
    paired = image["modality-share vs both"]
    assert paired["mean"] == pytest.approx(0.4167, abs=1e-4) and paired["seeds"] == 3  # 0.4, 0.4, 0.45
    assert paired["low"] > 0  # wins beyond the seed noise
    assert image["acc vs both"]["mean"] == 0 and image["acc vs both"]["low"] == 0  # no difference: no win
    out = tmp_path / "out"
    assert main(["variants", f"both={base}", f"image={better}", "--baseline", "both", "-o", str(out)]) == 0
    text = (out / "variants.md").read_text()
    assert "settings that differ: cross-modal.towers" in text and "| medlego | image | 0.883 |" in text
    table = list(csv.DictReader(open(out / "variants.csv")))
    assert [r["variant"] for r in table] == ["both", "image"]


def test_different_sites_or_an_unknown_baseline_are_refused(tmp_path):
    base = comparison(tmp_path / "a", "both", {0: (0.4, 0.6)})
    other = comparison(tmp_path / "b", "image", {0: (0.4, 0.6)}, sites=("blood", "breast"))
    with pytest.raises(UserError, match="different sites"):
        render_variants({"a": base, "b": other}, "a", tmp_path / "out")
    with pytest.raises(UserError, match="--baseline 'c' is none of the variants"):
        render_variants({"a": base, "b": other}, "c", tmp_path / "out")
    with pytest.raises(UserError, match="holds no results.json"):
        render_variants({"a": base, "b": tmp_path}, "a", tmp_path / "out")


def test_a_name_given_twice_is_refused(tmp_path, capsys):
    base = comparison(tmp_path / "a", "both", {0: (0.4, 0.6)})
    assert main(["variants", f"a={base}", f"a={base}", "--baseline", "a", "-o", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr()
    assert "given twice" in printed.err + printed.out


def test_the_metrics_compared_can_be_named_and_a_missing_one_is_refused(tmp_path):
    base = comparison(tmp_path / "both", "both", {0: (0.4, 0.6), 1: (0.5, 0.5)})
    other = comparison(tmp_path / "image", "image", {0: (0.9, 0.9), 1: (0.8, 1.0)})
    out = tmp_path / "out"
    assert main(["variants", f"both={base}", f"image={other}", "--baseline", "both", "-o", str(out),
                 "--metrics", "acc"]) == 0
    header = next(line for line in (out / "variants.md").read_text().splitlines() if line.startswith("| row"))
    assert header == "| row | variant | own-prompt ACC | own-prompt ACC vs both |"
    with pytest.raises(UserError, match="--metrics pooled-route-share: no comparison holds it"):
        render_variants({"both": base, "image": other}, "both", tmp_path / "o2", ["pooled-route-share"])


def test_two_metrics_of_the_same_runs_are_paired_by_seed(tmp_path, capsys):
    base = comparison(tmp_path / "both", "both", {0: (0.4, 0.6), 1: (0.5, 0.5), 2: (0.3, 0.5)})
    out = tmp_path / "out"
    # acc is 0.5 everywhere: modality-share - acc per seed is 0.0, 0.0, -0.1
    assert main(["variants", f"both={base}", "--baseline", "both", "-o", str(out),
                 "--pairs", "modality-share:acc"]) == 0
    lines = (out / "variants.md").read_text().splitlines()
    line = next(x for x in lines if x.startswith("| medlego | both | modality"))
    assert "| 0.467 | 0.500 | -0.033 [" in line
    assert main(["variants", f"both={base}", "--baseline", "both", "-o", str(out), "--pairs", "acc"]) == 2
    assert "METRIC_A:METRIC_B" in capsys.readouterr().out
