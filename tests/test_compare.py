"""`fl-medlego compare`: options tuned on validation only, cached specialists, the Table 1 outputs."""

import json
import re
from pathlib import Path

import pytest

from fl_medlego.cli import main
from fl_medlego.cli.local_run import run_local_federation
from fl_medlego.compare import Comparison
from fl_medlego.compare.cache import settings_hash
from fl_medlego.compare.table import specialists_row, summarize, to_markdown
from fl_medlego.config import parse_run_config
from fl_medlego.kinds import get_kind
from fl_medlego.kinds.adapter import AdapterSite
from fl_medlego.lora import Adapter
from fl_medlego.scenario import load_scenario_config, parse_overrides

TINY = ("sites='breast,pneumonia' data.max-train=40 data.max-eval=40 train.local-epochs=1 lora.rank=2")


def tiny_config():
    return load_scenario_config("scenarios/cross_domain", TINY)


def test_overrides_follow_flower_syntax_and_refuse_undeclared_keys():
    assert parse_overrides("num-rounds=5 sites='a,b' merge.energy=0.95") == {
        "num-rounds": 5, "sites": "a,b", "merge.energy": 0.95}
    with pytest.raises(ValueError, match="not declared"):
        load_scenario_config("scenarios/cross_domain", "num-round=5")
    assert load_scenario_config("scenarios/cross_domain")["lora.rank"] == 4


def test_tuning_uses_validation_only_and_specialists_are_cached(tmp_path, monkeypatch):
    calls = []
    real = AdapterSite.evaluate

    def spy(self, data, adapter, head, split="test"):
        calls.append((data.site.name, split, adapter.metadata.get("merge", {}).get("options")))
        return real(self, data, adapter, head, split)

    monkeypatch.setattr(AdapterSite, "evaluate", spy)
    results = Comparison(tiny_config(), ["medlego", "ties"], [0], tmp_path / "out", tmp_path / "cache").run()
    test_options = {str(o) for _, split, o in calls if split == "test" and o is not None}
    chosen = {str({**results["rows"][m]["0"]["options"]}) for m in ("medlego", "ties")}
    assert test_options == chosen  # test data only ever sees the option set chosen on validation
    n_val = sum(split == "val" for _, split, _ in calls)
    assert n_val == 2 * (4 + 6)  # two sites x (medlego's 4 + ties' 6 candidate settings)
    for name in ("table.md", "table.csv", "table.png", "results.json"):
        assert (tmp_path / "out" / name).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached specialist was trained again")

    monkeypatch.setattr(AdapterSite, "train", no_training)
    again = Comparison(tiny_config(), ["post_avg"], [0], tmp_path / "out2", tmp_path / "cache").run()
    assert set(again["rows"]) == {"specialists (SVD-LoRA)", "post_avg"}


def test_a_private_specialist_is_cached_per_number_of_rounds_a_public_one_is_not():
    # DP-SGD plans a site's noise over num-rounds: a specialist trained for 3 rounds is not the 1-round one.
    def key(rounds, **settings):
        return settings_hash(parse_run_config({**tiny_config(), "num-rounds": rounds, **settings}))

    private = {"privacy.mode": "dp-sgd", "privacy.epsilon": 8.0}
    assert key(1, **private) != key(3, **private)
    assert key(1) == key(3)


def test_table_ranks_and_normalizes():
    results = {"sites": ["a", "b"], "seeds": [0, 1], "rows": {}}
    def row(accs_by_seed):
        return {str(s): {"test": {site: {"acc": acc, "auc": 0.5, "f1": 0, "loss": 0} for site, acc in accs.items()}}
                for s, accs in accs_by_seed.items()}
    results["rows"]["specialists (SVD-LoRA)"] = row({0: {"a": 1.0, "b": 0.8}, 1: {"a": 1.0, "b": 0.8}})
    results["rows"]["x"] = row({0: {"a": 0.5, "b": 0.4}, 1: {"a": 0.7, "b": 0.4}})
    results["rows"]["y"] = row({0: {"a": 0.9, "b": 0.8}, 1: {"a": 0.9, "b": 0.8}})
    table = summarize(results)
    assert table["x"]["a ACC"] == pytest.approx((0.6, 0.1))
    assert table["y"]["mean norm. ACC"][0] == pytest.approx((0.9 + 1.0) / 2)
    md = to_markdown(results)
    assert "**0.900 ± 0.000**" in md and "<u>0.600 ± 0.100</u>" in md


def test_a_site_whose_specialist_scored_zero_is_left_out_of_the_ratio_and_named():
    # One modality split 16 ways gives test splits of a few dozen images: a specialist can score 0 there.
    def row(accs):
        return {"0": {"test": {site: {"acc": acc, "auc": 0.5, "f1": 0, "loss": 0} for site, acc in accs.items()}}}
    results = {"sites": ["a", "b"], "seeds": [0], "rows": {"specialists (SVD-LoRA)": row({"a": 0.8, "b": 0.0}),
                                                           "x": row({"a": 0.4, "b": 0.5})}}
    assert summarize(results)["x"]["mean norm. ACC"][0] == pytest.approx(0.5)  # a alone: 0.4 / 0.8
    assert "Left out of `mean norm. ACC`" in to_markdown(results) and "b (seed 0)" in to_markdown(results)


def test_each_strategy_is_tested_against_medlego_paired_by_seed():
    from fl_medlego.compare.table import paired_difference

    def row(accs):  # one site, specialist ACC 1.0: the normalized ACC is the ACC
        return {str(s): {"test": {"a": {"acc": acc, "auc": 0.5, "f1": 0, "loss": 0}}} for s, acc in enumerate(accs)}

    seeds = range(5)
    results = {"sites": ["a"], "seeds": list(seeds), "rows": {
        "specialists (SVD-LoRA)": row([1.0] * 5), "medlego": row([0.80, 0.70, 0.85, 0.75, 0.90]),
        "better": row([0.83, 0.74, 0.87, 0.79, 0.93]),  # +0.02 to +0.04 every seed: noise between seeds cancels
        "noise": row([0.85, 0.65, 0.86, 0.70, 0.92])}}
    better, noise = paired_difference(results, "better"), paired_difference(results, "noise")
    assert better["mean"] == pytest.approx(0.032) and better["low"] > 0 and better["p"] < 0.01
    assert noise["low"] < 0 < noise["high"] and noise["p"] > 0.5
    md = to_markdown(results)
    assert "vs medlego" in md and "+0.032 [" in md and "p=" in md
    marked = [line for line in md.splitlines() if re.search(r"p=[0-9.e-]+ \*", line)]
    assert len(marked) == 1 and marked[0].startswith("| better")  # only `better` is marked significant


def test_the_site_recipe_table_pairs_each_variant_with_the_baseline_by_seed():
    from benchmarks.site_recipe import table

    tasks, seeds = ["a", "b"], [0, 1, 2]
    base = {0: 0.70, 1: 0.80, 2: 0.75}  # seed-to-seed spread far above the gain below
    rows = {}
    for seed in seeds:
        for task in tasks:
            rows[f"baseline/{task}/{seed}"] = {"acc": base[seed], "f1": 0.5}
            rows[f"steady/{task}/{seed}"] = {"acc": base[seed] + 0.02 + 0.001 * seed, "f1": 0.6}
            rows[f"mixed/{task}/{seed}"] = {"acc": base[seed] + (0.05 if seed != 1 else -0.06), "f1": 0.5}
    del rows["mixed/b/2"]  # an unfinished seed counts for neither the mean nor the test
    lines = {line.split(" | ")[0]: line for line in table(rows, ["baseline", "steady", "mixed"], tasks, seeds)
             .splitlines()[2:]}
    assert "+2.1 [" in lines["| steady"] and lines["| steady"].endswith("| 0.600 | 3 |")
    assert re.search(r"p=[0-9.e-]+ \*", lines["| steady"])  # small but steady: beyond the noise
    assert "-0.5 [" in lines["| mixed"] and " *" not in lines["| mixed"] and lines["| mixed"].endswith("| 2 |")


def test_one_shot_and_federated_rounds_are_separate_rows_and_resume(tmp_path, monkeypatch):
    run_config = tiny_config()
    comparison = Comparison(run_config, ["medlego"], [0], tmp_path / "out", tmp_path / "cache", rounds=(1, 2),
                            federate=run_local_federation)
    results = comparison.run()
    one_shot, federated = results["rows"]["medlego"]["0"], results["rows"]["medlego (2 rounds)"]["0"]
    assert set(federated["test"]) == {"breast", "pneumonia"} and federated["rounds"] == 2
    assert federated["options"] == one_shot["options"]  # chosen once, on validation, in the one-shot merge
    # The row is a real federation (the ServerApp's strategy and the ClientApp), whose round 1 trained the
    # same specialists as the comparison's cache.
    summary = json.loads((Path(federated["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["site_status"]["breast"]["state"] == "merged"
    specialists = results["rows"][specialists_row(get_kind("adapter"))]["0"]["test"]
    for site in ("breast", "pneumonia"):
        assert summary["sites"][site]["specialist"] == pytest.approx(specialists[site], abs=1e-6)
        merged = {k: v for k, v in summary["sites"][site]["merged"].items() if k != "round"}
        assert federated["test"][site] == pytest.approx(merged)
    assert federated["test"] != one_shot["test"]  # the sites trained another round from the merge
    assert "medlego (2 rounds)" in to_markdown(results)
    monkeypatch.setattr(AdapterSite, "train", lambda *a, **k: pytest.fail("a finished row was trained again"))
    again = Comparison(run_config, ["medlego"], [0], tmp_path / "out", tmp_path / "cache", rounds=(1, 2),
                       federate=run_local_federation).run()
    assert again["rows"]["medlego (2 rounds)"] == results["rows"]["medlego (2 rounds)"]


def test_the_energy_sweep_records_accuracy_and_the_rank_each_threshold_keeps(tmp_path):
    from fl_medlego.compare.table import energy_sweep

    out = tmp_path / "out"
    results = Comparison(tiny_config(), [], [0], out, tmp_path / "cache", energies=(0.3, 1.0)).run()
    points = energy_sweep(results)
    assert [p["energy"] for p in points] == [0.3, 1.0]
    assert points[0]["merged_rank"] < points[1]["merged_rank"] == 4  # v = 1 keeps both rank-2 sites whole
    assert (out / "energy_sweep.png").is_file() and "medlego (v=0.3, fixed)" in (out / "table.md").read_text()


def test_scaling_shares_each_specialist_across_subsets_and_plots_against_n(tmp_path, monkeypatch):
    from fl_medlego.compare.scaling import run_scaling, subsets_for

    run_config = load_scenario_config("scenarios/cross_domain", TINY.replace("'breast,pneumonia'",
                                                                              "'blood,breast,pneumonia'"))
    assert subsets_for(run_config, [2], max_subsets=2) != subsets_for(run_config, [3], max_subsets=2)
    trained = []
    real = AdapterSite.train
    monkeypatch.setattr(AdapterSite, "train", lambda self, data, *a, **k: trained.append(data.site.name)
                        or real(self, data, *a, **k))
    summary = run_scaling(run_config, ["post_avg"], [0], [2, 3], tmp_path / "out", tmp_path / "cache")
    assert sorted(trained) == ["blood", "breast", "pneumonia"]  # once each, shared by the 3 pairs and the triple
    assert set(summary) == {"post_avg"} and set(summary["post_avg"]) == {2, 3}
    assert summary["post_avg"][2]["subsets"] == 3 and summary["post_avg"][3]["subsets"] == 1
    assert (tmp_path / "out" / "scaling.png").is_file() and (tmp_path / "out" / "scaling.csv").is_file()
    split = load_scenario_config("scenarios/in_domain", TINY.replace("'breast,pneumonia'", "'pneumonia:2'"))
    assert subsets_for(split, [2, 4], 6) == {2: ["pneumonia:2"], 4: ["pneumonia:4"]}


def test_comparisons_of_separate_seeds_combine_into_one_and_conflicts_are_refused(tmp_path):
    from fl_medlego.compare.combine import combine_comparisons

    def part(seed, acc, **settings):
        return {"settings": {"seed": seed, "train": {"seed": seed, "lr": 0.01}, **settings}, "sites": ["a"],
                "seeds": [seed], "wall_time_s": 10.0,
                "rows": {"medlego": {str(seed): {"test": {"a": {"acc": acc, "auc": 0.5, "f1": 0.0, "loss": 0.0}}}}}}

    combined = combine_comparisons([part(0, 0.5), part(1, 0.6)])
    assert combined["seeds"] == [0, 1] and set(combined["rows"]["medlego"]) == {"0", "1"}
    assert combined["wall_time_s"] == 20.0
    with pytest.raises(ValueError, match="differs between the parts"):
        combine_comparisons([part(0, 0.5), part(0, 0.7)])
    other = part(1, 0.6)
    other["settings"]["train"]["lr"] = 0.1
    with pytest.raises(ValueError, match="other settings.*train"):
        combine_comparisons([part(0, 0.5), other])


def test_report_rerenders_a_comparison(tmp_path):
    results = {"sites": ["a"], "seeds": [0], "rows": {"specialists (SVD-LoRA)": {"0": {"test": {
        "a": {"acc": 0.9, "auc": 0.8, "f1": 0.5, "loss": 0.1}}}}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "table.png").is_file() and "0.900" in (tmp_path / "table.md").read_text()


def test_the_terminal_table_never_cuts_strategy_names():
    from rich.console import Console

    from fl_medlego.compare import print_whole, rich_table

    long = "a_strategy_with_a_long_name"
    results = {"sites": ["blood", "breast", "organa", "pneumonia"], "seeds": [0, 1, 2], "rows": {
        row: {str(s): {"test": {site: {"acc": 0.5, "auc": 0.5, "f1": 0, "loss": 0}
                                for site in ("blood", "breast", "organa", "pneumonia")}} for s in range(3)}
        for row in ("specialists (SVD-LoRA)", long, "medlego")}}
    console = Console(width=80, record=True, file=__import__("io").StringIO())
    print_whole(console, rich_table(results))
    text = console.export_text()
    assert long in text and "medlego" in text and "…" not in text


def test_merge_list_shows_options_not_class_attributes(capsys):
    assert main(["merge", "--list"]) == 0
    out = capsys.readouterr().out
    assert "search_space=" not in out and "energy=0.9" in out


def test_weight_averaging_runs_through_the_same_comparison_path(tmp_path):
    # The scenario's own strategy does not matter: the SVD-LoRA specialists (the reference) are always trained.
    run_config = {**tiny_config(), "strategy": "vit_avg"}
    results = Comparison(run_config, ["vit_avg"], [0], tmp_path / "out", tmp_path / "cache").run()
    assert set(results["rows"]) == {"specialists (SVD-LoRA)", "specialists (full fine-tune)", "vit_avg"}
    for row in ("specialists (full fine-tune)", "vit_avg"):
        test = results["rows"][row]["0"]["test"]
        assert set(test) == {"breast", "pneumonia"} and all({"acc", "auc", "f1"} <= set(m) for m in test.values())
    # The average is not one of the specialists: each site is scored on a model its own training did not make alone.
    assert results["rows"]["vit_avg"]["0"]["test"] != results["rows"]["specialists (full fine-tune)"]["0"]["test"]
    assert any((tmp_path / "cache").rglob("backbone.safetensors"))
    assert "vit_avg" in (tmp_path / "out" / "table.md").read_text()
    normalized = summarize(results)["vit_avg"]["mean norm. ACC"][0]
    assert 0 < normalized < 10


def test_part_weights_are_chosen_on_validation_and_carried_into_the_federated_row(tmp_path, monkeypatch):
    calls = []
    real = AdapterSite.evaluate

    def spy(self, data, adapter, head, split="test"):
        calls.append((split, adapter.metadata.get("merge", {}).get("parts", {}).get("weights")))
        return real(self, data, adapter, head, split)

    monkeypatch.setattr(AdapterSite, "evaluate", spy)
    run_config = {**tiny_config(), "merge.part-weights": "blocks.0=1|3"}
    results = Comparison(run_config, ["medlego"], [0], tmp_path / "out", tmp_path / "cache", rounds=(1, 2),
                         federate=run_local_federation).run()
    one_shot, federated = results["rows"]["medlego"]["0"], results["rows"]["medlego (2 rounds)"]["0"]
    tried = [w for split, w in calls if split == "val"]
    assert sorted({w["blocks.0"] for w in tried}) == [1.0, 3.0] and len(tried) == 2 * 4 * 2  # sites x v x weights
    chosen = one_shot["part_weights"]
    assert {str(w) for split, w in calls if split == "test" and w} == {str(chosen)}  # test sees the chosen one only
    assert federated["part_weights"] == chosen
    settings = json.loads((Path(federated["run_dir"]) / "settings.json").read_text())
    assert settings["merge.part-weights"] == f"blocks.0={chosen['blocks.0']:g}"


def test_a_federation_weights_round_one_only_and_its_guard_allows_for_the_weight(tmp_path):
    from fl_medlego.merging import adapter_norm

    def part_norm(adapter, prefix):
        return adapter_norm(Adapter({n: f for n, f in adapter.factors.items() if n.startswith(prefix)},
                                    adapter.scale))

    # A weight far above the combined check's 10 x N slack: the run's own weight raises the honest bound.
    run_config = {**tiny_config(), "num-rounds": 2, "merge.part-weights": "blocks.0=500",
                  "output-dir": str(tmp_path / "runs")}
    federation = run_local_federation(run_config, tmp_path / "state")
    summary = json.loads((federation.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("failure")
    cfg = parse_run_config(run_config)
    rounds = [cfg.kind_server().load(federation.strategy.results.round_dir(r), None) for r in (1, 2)]
    growth = [part_norm(rounds[1], p) / part_norm(rounds[0], p) for p in ("blocks.0.", "blocks.1.")]
    # Round 2 starts from round 1's merge and is combined unweighted: the weighted part grows as the rest
    # does, not 500-fold again.
    assert growth[0] < 5 * growth[1] and growth[0] < 5
