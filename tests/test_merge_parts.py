"""Merging an adapter part by part (merge.part-methods / merge.part-weights): each part as its own method would
merge it, times its weight; prefixes cover whole name components; a part naming nothing is refused."""

import pytest
import torch

from fl_medlego.config import parse_run_config, settings_table
from fl_medlego.errors import ConfigError
from fl_medlego.lora import Adapter
from fl_medlego.merging import merge_adapters
from fl_medlego.merging.parts import PartMerge, merge_by_parts, part_of
from fl_medlego.merging.task_arithmetic import TaskArithmeticOptions
from fl_medlego.scenario import load_scenario_config

from conftest import random_factors

NAMES = ("image.blocks.0.q", "image.blocks.1.q", "projection.map", "text.layer.0.query", "textual.x")


def sites(rng, n=3):
    return [Adapter({name: random_factors(8, 6, 2, rng) for name in NAMES}, scale=1.5) for _ in range(n)]


def dense(f):
    return (f.B.double() * f.E.double()) @ f.A.double()


def only(adapters, names):
    return [Adapter({n: a.factors[n] for n in names}, a.scale) for a in adapters]


def test_each_part_is_its_methods_merge_times_its_weight(rng):
    adapters = sites(rng)
    parts = PartMerge(methods={"text": ("task_arithmetic", TaskArithmeticOptions(lam=0.7))},
                      weights={"projection": 4.0, "image.blocks.1": 0.5})
    merged = merge_by_parts(adapters, "medlego", None, None, parts)
    plain = merge_adapters(adapters, "medlego")
    text = merge_adapters(only(adapters, ["text.layer.0.query"]), "task_arithmetic", lam=0.7)
    assert torch.allclose(dense(merged.factors["image.blocks.0.q"]), dense(plain.factors["image.blocks.0.q"]))
    assert torch.allclose(dense(merged.factors["image.blocks.1.q"]), 0.5 * dense(plain.factors["image.blocks.1.q"]))
    assert torch.allclose(dense(merged.factors["projection.map"]), 4 * dense(plain.factors["projection.map"]))
    assert torch.allclose(dense(merged.factors["text.layer.0.query"]), dense(text.factors["text.layer.0.query"]))
    # "text" covers whole name components: "textual.x" is merged as the rest is
    assert torch.allclose(dense(merged.factors["textual.x"]), dense(plain.factors["textual.x"]))
    assert list(merged.factors) == list(NAMES) and merged.scale == 1.0
    assert merged.metadata["merge"]["parts"]["weights"] == {"projection": 4.0, "image.blocks.1": 0.5}
    assert merged.metadata["merge"]["parts"]["methods"]["text"]["method"] == "task_arithmetic"


def test_site_weights_reach_every_part(rng):
    adapters = sites(rng)
    weights = [0.5, 0.3, 0.2]  # merge.weighting='examples', normalised
    merged = merge_by_parts(adapters, "medlego", weights, None, PartMerge(weights={"projection": 2.0}))
    plain = merge_adapters(adapters, "medlego", weights)
    for name in NAMES:
        factor = 2.0 if name == "projection.map" else 1.0
        assert torch.allclose(dense(merged.factors[name]), factor * dense(plain.factors[name]))
    assert merged.metadata["merge"]["weights"] == pytest.approx(weights)


def test_the_longest_prefix_wins_and_whole_components_only():
    assert part_of("image.blocks.1.q", ["image", "image.blocks.1"]) == "image.blocks.1"
    assert part_of("image.blocks.10.q", ["image", "image.blocks.1"]) == "image"
    assert part_of("textual.x", ["text"]) is None


def test_a_part_that_names_no_matrix_is_refused_with_the_parts_there_are(rng):
    with pytest.raises(ValueError, match=r"\['projectoin'\] name no adapted matrix.*image, projection, text"):
        merge_by_parts(sites(rng), "medlego", None, None, PartMerge(weights={"projectoin": 2.0}))


def cross_modal(overrides: str = ""):
    return parse_run_config(load_scenario_config("scenarios/cross_modal", overrides))


def test_the_settings_parse_show_and_refuse():
    cfg = cross_modal("merge.part-weights='projection=4,image=1|2' merge.part-methods='projection=task_arithmetic'")
    assert cfg.merge.part_weights == {"projection": (4.0,), "image": (1.0, 2.0)}
    assert cfg.merge.part_options["projection"][0] == "task_arithmetic"
    table = settings_table(cfg)
    assert table["merge.part-weights"] == "projection=4,image=1|2"
    assert parse_run_config({**load_scenario_config("scenarios/cross_modal"), **table}).merge == cfg.merge
    assert cfg.merge.part_weight_grid() == [{"projection": 4.0, "image": 1.0}, {"projection": 4.0, "image": 2.0}]
    with pytest.raises(ConfigError, match="several weights for \\['image'\\].*compare"):
        assert cfg.merge.parts  # a run takes one weight per part
    assert cfg.merge.with_part_weights({"image": 2.0}).parts.weights == {"projection": 4.0, "image": 2.0}
    assert cross_modal().merge.part_weight_grid() == [{}] and not cross_modal().merge.parts
    # settings.json gives back the very weight, also one that is not short
    odd = cross_modal("merge.part-weights='projection=0.30000000000000004'")
    assert parse_run_config({**load_scenario_config("scenarios/cross_modal"), **settings_table(odd)}).merge == odd.merge
    for bad, said in [("merge.part-weights='projection=0'", "positive number"),
                      ("merge.part-weights='projection=2|2'", "different ones"),
                      ("merge.part-weights='projection'", "PREFIX=VALUE"),
                      ("merge.part-weights='image=2,image=3'", "names part 'image' twice"),
                      ("merge.part-methods='text=medlgo'", "text=medlgo' is refused: unknown merge method")]:
        with pytest.raises(ConfigError, match=said):
            cross_modal(bad)


def test_a_kind_without_parts_refuses_them():
    with pytest.raises(ConfigError, match="kind 'full' send whole updates"):
        parse_run_config(load_scenario_config("scenarios/cross_domain", "strategy='vit_avg' merge.part-weights='x=2'"))


def test_the_server_checks_the_parts_against_its_adapter_before_training():
    cfg = cross_modal("merge.part-methods='text=task_arithmetic'")  # the text tower is frozen by default
    with pytest.raises(ConfigError, match=r"\['text'\] name no adapted matrix.*image, projection"):
        cfg.kind_server().check_merge(cfg.merge)
    fine = cross_modal("merge.part-weights='projection=4'")
    fine.kind_server().check_merge(fine.merge)


def test_part_weights_scale_round_one_only():
    """Later rounds' updates start from round 1's weighted merge and carry its weight already."""
    merge = cross_modal("merge.part-weights='projection=4' merge.part-methods='projection=task_arithmetic'").merge
    assert merge.for_round(1).parts.weights == {"projection": 4.0}
    assert merge.for_round(2).parts.weights == {} and merge.for_round(2).parts.methods == merge.parts.methods
