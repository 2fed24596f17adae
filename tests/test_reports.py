"""Reports that explain failures and do not flatter: summaries and comparison results built by hand, no training."""

import json
import math
import traceback

import numpy as np
import pytest

from fl_medlego import wire
from fl_medlego.compare.figures import energy_figure, heatmap_figure
from fl_medlego.compare.table import energy_sweep, to_markdown
from fl_medlego.metrics import at_majority_rate, classification_metrics, majority_rate
from fl_medlego.report import summary_figure, summary_markdown
from fl_medlego.results import RunResults, render_run
from fl_medlego.server.replies import bounded, site_error_text

CAUSE = "could not load bloodmnist from /home/someone/data/bloodmnist.npz: the file is cut short"


def _failed_summary() -> dict:
    return {"strategy": "medlego", "wall_time_s": 3.0, "mean_normalized_acc": math.nan, "sites": {},
            "status": "failed: round 1 combined 1 of 2 sites, fewer than min-sites requires (2): blood: rejected",
            "site_status": {"blood": {"state": "rejected", "round": 1, "reason": "UserError: could not load | it"},
                            "breast": {"state": "accepted", "round": 1, "reason": ""}},
            "sites_missing": [], "sites_held_out": []}


def _site(own_acc: float, merged_acc: float, rate: float, merged_round: int = 1) -> dict:
    own = {"acc": own_acc, "auc": 0.5, "f1": 0.3, "loss": 1.0, wire.MAJORITY_RATE: rate}
    merged = {**own, "acc": merged_acc, "round": merged_round}
    return {"specialist": own, "merged": merged, "normalized_acc": merged_acc / own_acc}


# 1. a failed run's summary.md and summary.png

def test_a_failed_runs_summary_states_its_status_and_each_sites_reason():
    md = summary_markdown(_failed_summary())
    assert "Status: **failed**: round 1 combined 1 of 2 sites" in md
    assert "No test metrics" in md and "| site | specialist ACC" not in md  # no empty table
    assert "| blood | rejected | 1 | UserError: could not load \\| it |" in md  # a | in a reason stays in its cell
    assert "| breast | accepted | 1 |  |" in md


def test_a_completed_runs_summary_keeps_its_table_first_and_says_completed():
    summary = {"strategy": "medlego", "wall_time_s": 1.0, "mean_normalized_acc": 0.9, "status": "completed",
               "sites": {"blood": _site(0.8, 0.72, 0.3)},
               "site_status": {"blood": {"state": "merged", "round": 1, "reason": ""}}}
    md = summary_markdown(summary)
    assert "Status: completed" in md
    assert md.index("| site | specialist ACC") < md.index("| site | state | round | reason |")


def test_the_right_modality_share_of_a_cross_modal_run_is_in_its_summary_table_and_file():
    """summary.json held it per site; the printed table's caption and summary.md say it, on average and per site."""
    from rich.console import Console

    from fl_medlego.crossmodal.metrics import MODALITY_SHARE
    from fl_medlego.report import summary_table

    sites = {"blood": _site(0.9, 0.8, 0.2), "organa": _site(0.8, 0.4, 0.2), "cxr": _site(0.7, 0.6, 0.5)}
    sites["blood"]["merged"][MODALITY_SHARE] = 1.0
    sites["organa"]["merged"][MODALITY_SHARE] = 0.03
    sites["cxr"]["merged"][MODALITY_SHARE] = math.nan  # not measured: not counted in the mean
    summary = {"strategy": "medlego", "wall_time_s": 1.0, "mean_normalized_acc": 0.7, "status": "completed",
               "sites": sites}
    line = "right modality, merged model: 0.515 on average over 2 sites (blood 1.00, organa 0.03)"
    assert "R" + line[1:] + "." in summary_markdown(summary)
    console = Console(width=200, record=True)
    console.print(summary_table(summary))
    assert line in console.export_text()
    many = {f"site-{i}": _site(0.8, 0.5, 0.2) for i in range(30)}  # above MAX_DRAWN_SITES: the range, no names
    for i, site in enumerate(many.values()):
        site["merged"][MODALITY_SHARE] = i / 29
    assert "right modality, merged model: 0.500 on average over 30 sites (0.00 to 1.00)." in summary_markdown(
        {**summary, "sites": many}).replace("Right", "right")
    for site in sites.values():
        site["merged"].pop(MODALITY_SHARE, None)
    assert "right modality" not in summary_markdown(summary)  # a head-based run has no such line


def test_a_failed_run_without_metrics_draws_its_reason_not_empty_axes():
    fig = summary_figure(_failed_summary(), [])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert all(not ax.axison for ax in fig.axes)  # no empty axes
    assert not any(ax.get_legend() for ax in fig.axes)
    assert any("failed: round 1 combined 1 of 2" in t and "blood: rejected (round 1): UserError" in t for t in texts)


def test_a_failed_run_with_some_metrics_draws_only_them_with_a_legend_entry_for_each():
    summary = {**_failed_summary(), "sites": {"blood": {"specialist": {"acc": 0.8}, "merged": {},
                                                        "normalized_acc": math.nan}}}
    fig = summary_figure(summary, [])
    bars, curves = fig.axes
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["specialist"]  # merged drew nothing
    assert bars.get_ylim() == (0, 1)
    assert not curves.axison and curves.get_legend() is None
    assert "failed" in fig._suptitle.get_text()


def test_many_sites_are_drawn_as_distributions_not_a_bar_and_a_line_each():
    sites = {f"organa-{i}": {"specialist": {"acc": i / 100}, "merged": {"acc": 0.5}, "normalized_acc": 1.0}
             for i in range(1, 101)}
    evaluations = [{"site": s, "round": r, "acc": 0.4 + r / 10} for s in sites for r in (1, 2)]
    fig = summary_figure({"status": "completed", "strategy": "medlego", "sites": sites}, evaluations)
    bars, curves = fig.axes
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["specialist, 100 sites",
                                                                    "merged (medlego), 100 sites"]
    assert len(bars.patches) == 40  # two histograms of 20 bins, not 200 bars
    assert len(curves.get_legend().get_texts()) == 2 and len(curves.lines) == 1  # the median, and its band
    assert list(curves.lines[0].get_ydata()) == pytest.approx([0.5, 0.6])


def test_render_run_writes_a_failed_runs_files(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(_failed_summary()))
    md, png = render_run(tmp_path)
    assert "rejected" in md.read_text() and png.stat().st_size > 0


# 2. a site's failure reason, as Flower and Ray wrap it

def _raise_in_site():
    from fl_medlego.errors import UserError

    raise UserError(CAUSE)


def _ray_wrapped_reason() -> str:
    """The reason of a ClientApp exception in simulation, built as Flower 1.41 and Ray 2.55 build it:
    flwr/simulation/ray_transport/ray_actor.py wraps it in ClientAppException, Ray's task machinery in a
    RayTaskError whose text is the coloured traceback (ray/exceptions.py, format_error_message), and
    flwr/server/superlink/fleet/vce/vce_api.py writes str(type(ex)) + ":<'" + str(ex) + "'>"."""
    from flwr.clientapp.client_app import ClientAppException
    from ray._private.utils import format_error_message
    from ray.exceptions import RayTaskError

    try:
        try:
            _raise_in_site()
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
    except Exception as ex:
        trace = format_error_message(traceback.format_exc(), task_exception=True)
        err = RayTaskError("run", trace, ex, proctitle="ray::ClientAppActor.run", pid=4242, ip="127.0.0.1",
                           actor_repr="ClientAppActor()", actor_id="ab12").as_instanceof_cause()
    return str(type(err)) + ":<'" + str(err) + "'>"


def test_a_ray_wrapped_failure_shows_the_sites_cause_without_escape_codes():
    reason = _ray_wrapped_reason()
    assert reason.startswith("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::")
    assert site_error_text(reason) == f"UserError: {CAUSE}"
    shown = bounded(site_error_text(reason))
    assert shown == "UserError: could not load bloodmnist from <path…>: the file is cut short"
    assert bounded(reason) == shown  # a raw traceback, bounded, also keeps its cause
    assert "\x1b" not in site_error_text(reason + "\x1b[0m")


def test_a_site_chain_keeps_its_last_exception_and_a_plain_flower_wrapper_its_message():
    def chained():
        try:
            raise FileNotFoundError("bloodmnist.npz")
        except FileNotFoundError as err:
            raise ValueError("could not load bloodmnist") from err

    try:
        chained()
    except ValueError:
        trace = traceback.format_exc()
    assert site_error_text(trace) == "ValueError: could not load bloodmnist"
    # deployment (flwr/supernode/runtime/run_clientapp.py): no traceback, the message as it is
    assert site_error_text("<class 'ValueError'>:<'could not load bloodmnist'>") == "could not load bloodmnist"


def test_a_long_traceback_keeps_its_cause_and_bounded_text_stays_short():
    frames = "".join(f'  File "/site/code{i}.py", line {i}, in f\n    f()\n' for i in range(2000))
    reason = f"<class 'ValueError'>:<'Traceback (most recent call last):\n{frames}ValueError: the cause'>"
    assert site_error_text(reason) == "ValueError: the cause"
    assert len(bounded("x" * 10_000)) == 120
    assert bounded("\x1b[31mred\x1b[0m text\x07") == "red text"


# 3. specialists at their majority-class rate

def test_the_majority_rate_is_what_a_constant_guess_scores():
    labels = np.array([[0], [1], [1], [2]])
    metrics = classification_metrics(labels, np.tile([0.1, 0.8, 0.1], (4, 1)), "multi-class", 1.0)
    assert metrics[wire.MAJORITY_RATE] == metrics["acc"] == 0.5
    multi = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    assert majority_rate(multi, "multi-label, binary-class") == pytest.approx(0.75)  # per label: 3/4 and 3/4
    assert wire.METRIC_SCHEMA[wire.MAJORITY_RATE] == (0.0, 1.0, False)
    assert at_majority_rate({"acc": 0.654, wire.MAJORITY_RATE: 0.65})
    assert not at_majority_rate({"acc": 0.66, wire.MAJORITY_RATE: 0.65})
    assert not at_majority_rate({"acc": 0.66})  # no rate sent: no warning


def test_every_kind_declares_the_majority_rate_among_its_evaluation_metrics():
    from fl_medlego.kinds import get_kind

    for name in ("adapter", "full", "cross-modal"):
        assert wire.MAJORITY_RATE in get_kind(name).evaluate_metrics
    assert wire.SPECIALIST_PREFIX + wire.MAJORITY_RATE in wire.METRIC_SCHEMA


def test_the_run_summary_flags_a_specialist_at_its_majority_rate(tmp_path):
    results = RunResults(tmp_path / "run", {"strategy": "medlego"})
    own = {"blood": {"acc": 0.652, "auc": 0.5, "f1": 0.2, "loss": 1.0, wire.MAJORITY_RATE: 0.65},
           "breast": {"acc": 0.9, "auc": 0.9, "f1": 0.8, "loss": 0.3, wire.MAJORITY_RATE: 0.7}}
    merged = {s: {**m, "acc": 0.66, "round": 1} for s, m in own.items()}
    summary = results.write_summary(own, merged, extra={"status": "completed"})
    assert summary["specialists_at_majority_rate"] == ["blood"]
    assert summary["sites"]["blood"]["specialist_at_majority_rate"] is True
    assert summary["sites"]["breast"]["specialist_at_majority_rate"] is False
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "| blood | 0.652 † |" in md and "| breast | 0.900 |" in md
    assert "Warning: the specialist of blood scored its test split's majority-class rate" in md


# 4. normalized ACC above 1

def test_the_summary_says_why_normalized_acc_exceeds_one_after_several_rounds():
    summary = {"strategy": "medlego", "wall_time_s": 1.0, "mean_normalized_acc": 1.6, "status": "completed",
               "sites": {"blood": _site(0.4, 0.88, 0.2, merged_round=2), "breast": _site(0.8, 0.8, 0.7, 2)}}
    md = summary_markdown(summary)
    assert "Normalized ACC above 1 (blood 2.20): the specialist is round 1's model" in md
    assert "the merged model had 2 rounds of training" in md
    summary["sites"]["blood"]["normalized_acc"] = 0.9
    assert "Normalized ACC above 1" not in summary_markdown(summary)


# 5. comparison tables and figures

def _row(accs_by_seed: dict, rate: float = 0.3) -> dict:
    return {str(seed): {"test": {site: {"acc": acc, "auc": 0.5, "f1": 0.0, "loss": 0.0, wire.MAJORITY_RATE: rate}
                                 for site, acc in accs.items()}} for seed, accs in accs_by_seed.items()}


def test_values_equal_at_the_printed_precision_share_the_mark_and_none_is_second_to_its_equal():
    results = {"sites": ["a"], "seeds": [0], "rows": {
        "specialists (SVD-LoRA)": _row({0: {"a": 1.0}}), "x": _row({0: {"a": 0.9001}}),
        "y": _row({0: {"a": 0.8996}}), "z": _row({0: {"a": 0.85}}), "w": _row({0: {"a": 0.5}})}}
    acc = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in to_markdown(results).splitlines()
           if line.startswith("| ")}  # row -> its "a ACC" cell
    assert acc["x"] == acc["y"] == "**0.900**"  # 0.9001 and 0.8996 print alike: both best, neither second
    assert acc["z"] == "<u>0.850</u>" and acc["w"] == "0.500"


def test_the_comparison_names_specialists_at_their_majority_rate_by_site_and_seed():
    results = {"sites": ["a", "b"], "seeds": [0, 1], "rows": {
        "specialists (SVD-LoRA)": {**_row({0: {"a": 0.301, "b": 0.9}}), **_row({1: {"a": 0.3, "b": 0.302}})},
        "medlego": _row({0: {"a": 0.31, "b": 0.9}, 1: {"a": 0.31, "b": 0.3}})}}
    md = to_markdown(results)
    assert "mean norm. ACC †" in md
    assert "† Specialists at their test split's majority-class rate" in md
    assert md.rstrip().splitlines()[-3].endswith("a (seeds 0, 1), b (seed 1)")


def test_the_heatmap_scales_each_column_on_its_own_and_says_how_many_seeds():
    results = {"sites": ["a", "b"], "seeds": [0], "rows": {
        "specialists (SVD-LoRA)": _row({0: {"a": 0.5, "b": 0.8}}), "x": _row({0: {"a": 0.55, "b": 0.6}})}}
    fig = heatmap_figure(results)
    ax = fig.axes[0]
    norms = [(image.norm.vmin, image.norm.vmax) for image in ax.images]
    assert norms[:2] == [(0.0, 1.0), (0.0, 1.0)]  # the ACC columns on ACC's scale
    ratio = ax.images[2].norm
    assert ratio.vcenter == 1.0 and ratio.vmax > 1.0 > ratio.vmin  # the ratio on its own, centred on 1
    assert "1 seed" in ax.get_title() and "mean over" not in ax.get_title()
    results["seeds"] = [0, 1, 2]
    assert "mean over 3 seeds" in heatmap_figure(results).axes[0].get_title()


def test_the_energy_sweep_holds_the_specialists_level_and_shows_the_seeds_spread():
    one = [{"energy": v, "normalized_acc": acc, "std": 0.0, "by_seed": {"0": acc}, "merged_rank": 4}
           for v, acc in ((0.3, 1.0125), (0.9, 1.0165))]
    fig = energy_figure(one)
    low, high = fig.axes[0].get_ylim()
    assert low <= 0.8 and high >= 1.0165  # not auto-scaled to 1.0125-1.0165
    assert "1 seed" in fig.axes[0].get_title()
    assert not fig.axes[0].containers  # no error bars from a single seed
    three = [{**p, "by_seed": {"0": 0.9, "1": 0.95, "2": 1.0}, "std": 0.04} for p in one]
    fig = energy_figure(three)
    assert fig.axes[0].containers and "mean over 3 seeds" in fig.axes[0].get_title()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["specialists (1)", "mean ± std over 3 seeds"]


def test_energy_sweep_points_carry_each_seeds_value():
    results = {"sites": ["a"], "seeds": [0, 1], "rows": {
        "specialists (SVD-LoRA)": _row({0: {"a": 1.0}, 1: {"a": 0.5}}),
        "medlego (v=0.5, fixed)": {s: {**r, "options": {"energy": 0.5}} for s, r in
                                   _row({0: {"a": 0.9}, 1: {"a": 0.45}}).items()}}}
    (point,) = energy_sweep(results)
    assert point["by_seed"] == {"0": pytest.approx(0.9), "1": pytest.approx(0.9)}
