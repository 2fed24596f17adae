"""Differentially private sites: per-example gradients, the accountant and its independent check, the budget
enforced at the site and checked at the coordinator, and counting that survives a resume."""

import json
import logging
import math
import re

import numpy as np
import pytest
import torch
from flwr.app import MessageType, MetricRecord, RecordDict

from fl_medlego import wire
from fl_medlego.clients import app as client_app
from fl_medlego.clients.state import state_folder
from fl_medlego.config import parse_run_config
from fl_medlego.lora.layer import SVDLoRAUpdate
from fl_medlego.privacy import (
    PrivacyBudgetExhausted,
    PrivacyLedger,
    PrivacySettings,
    calibrate_noise,
    epsilon_of,
    private_steps,
    steps_per_epoch,
)
from fl_medlego.privacy.coordinator import (
    DP_STEPS,
    EPSILON_SPENT,
    NOISE_MULTIPLIER,
    PRIVACY_DELTA,
    REPORTED,
    SAMPLE_RATE,
)
from fl_medlego.privacy.site import PrivateTraining, load_ledger, save_ledger
from fl_medlego.results import read_events
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.site import load_site_data
from fl_medlego.train import TrainConfig, fit, task_loss, to_model_input

import message_federation

# Small private runs: two sites, 64 training images each, one epoch a round.
PRIVATE = {"sites": "blood,pneumonia", "data.max-train": 64, "data.max-eval": 32, "train.local-epochs": 1,
           "train.batch-size": 16, "num-rounds": 3, "privacy.mode": "dp-sgd", "privacy.epsilon": 8.0}


def _per_example_by_loop(model, params, x, y, task):
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        task_loss(model(x[i:i + 1]), y[i:i + 1], task).backward()
        grads.append([p.grad.clone() for p in params])
    return [torch.stack(g) for g in zip(*grads)]


def _opacus_per_example(model, params, x, y, task):
    from opacus import GradSampleModule

    import fl_medlego.privacy.grad_sampler  # noqa: F401  registers the SVD-LoRA sampler

    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    try:
        (task_loss(wrapped(x), y, task) * len(y)).backward()
        return [p.grad_sample.clone() for p in params]
    finally:
        wrapped._close()


def test_svd_lora_per_example_gradients_equal_a_loop_over_single_examples():
    gen = torch.Generator().manual_seed(0)
    layer = SVDLoRAUpdate(6, 5, rank=3, scale=2.0, init_std=0.5)
    with torch.no_grad():
        layer.lora_E.copy_(torch.randn(3, generator=gen))  # E = 0 at init would hide a wrong dB or dA
    model = torch.nn.Sequential(layer, torch.nn.Flatten(), torch.nn.Linear(6 * 4, 3))
    x, y = torch.randn(5, 4, 5, generator=gen), torch.randint(0, 3, (5, 1), generator=gen)  # 4 tokens each
    params = list(model.parameters())
    expected = _per_example_by_loop(model, params, x, y, "multi-class")
    got = _opacus_per_example(model, params, x, y, "multi-class")
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_opacus_uses_the_closed_form_sampler_not_its_functorch_fallback():
    from opacus import GradSampleModule

    from fl_medlego.privacy.grad_sampler import svd_lora_grad_sample

    assert GradSampleModule.GRAD_SAMPLERS[SVDLoRAUpdate] is svd_lora_grad_sample


def test_site_model_per_example_gradients_equal_the_loop():
    """The whole site model (adapter on the ViT's fused qkv, head): every trainable tensor, per image."""
    cfg = parse_run_config({"sites": "blood", "data.max-train": 8, "data.max-eval": 8})
    data = load_site_data(cfg, "blood")
    model = cfg.kind_site().build_model(data, None, None)
    gen = torch.Generator().manual_seed(1)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    x, y = to_model_input(data.train.images[:4], 28), data.train.labels[:4]
    expected = _per_example_by_loop(model, params, x, y, data.task)
    got = _opacus_per_example(model, params, x, y, data.task)
    assert len(got) == len(params) and any(g.abs().sum() > 0 for g in got)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("sample_rate,noise,steps", [(1 / 10, 0.82, 60), (1 / 40, 1.0, 600), (0.01, 0.7, 3000)])
def test_the_accountant_agrees_with_google_dp_accounting(sample_rate, noise, steps):
    """The same Poisson-subsampled Gaussian mechanism, composed `steps` times, through an independent library.

    RDP against RDP (same orders): within 1 %. Opacus's PRV accountant against dp-accounting's privacy loss
    distributions (both numerically tight): within 2 %. And RDP, an upper bound, is never below PLD.
    """
    from dp_accounting import dp_event, pld, rdp
    from opacus.accountants import RDPAccountant

    logging.getLogger("absl").setLevel(logging.ERROR)
    delta = 1e-5
    event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise)),
                                         steps)
    google_rdp = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    google_rdp.compose(event)
    google_pld = pld.PLDAccountant(value_discretization_interval=1e-4)
    google_pld.compose(event)
    ours_rdp = epsilon_of([(noise, sample_rate, steps)], delta, "rdp")
    ours_prv = epsilon_of([(noise, sample_rate, steps)], delta, "prv")
    assert ours_rdp == pytest.approx(google_rdp.get_epsilon(delta), rel=0.01)
    assert ours_prv == pytest.approx(google_pld.get_epsilon(delta), rel=0.02)
    assert ours_rdp >= google_pld.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_the_noise_spends_the_budget_over_the_planned_run(accountant):
    settings = PrivacySettings(mode="dp-sgd", epsilon=4.0, accountant=accountant)
    ledger = PrivacyLedger.plan(settings, num_train=500, batch_size=50, epochs=2, num_rounds=3)
    assert ledger.planned_steps == 3 * 2 * 10 and ledger.sample_rate == pytest.approx(0.1)
    assert ledger.delta == pytest.approx(1e-5)  # 1/(10 N) = 2e-4, capped at 1e-5
    planned = [(ledger.noise_multiplier, ledger.sample_rate, ledger.planned_steps)]
    assert 3.95 <= epsilon_of(planned, ledger.delta, accountant) <= 4.0
    # a little less noise would overspend: the calibration is not needlessly loose
    assert epsilon_of([(0.97 * ledger.noise_multiplier, 0.1, 60)], ledger.delta, accountant) > 4.0
    assert calibrate_noise(settings, 1e-5, 0.1, 30) < ledger.noise_multiplier  # fewer steps, less noise


def test_delta_defaults_to_a_tenth_of_one_over_n_at_most_1e_5():
    assert PrivacySettings().delta_for(2500) == pytest.approx(1e-5)
    assert PrivacySettings().delta_for(200_000) == pytest.approx(5e-7)
    assert PrivacySettings(delta=1e-6).delta_for(10) == 1e-6


@pytest.mark.parametrize("bad,match", [
    ({"privacy.mode": "dp"}, "privacy.mode must be one of"),
    ({"privacy.accountant": "gdp"}, "privacy.accountant must be one of"),
    ({"privacy.mode": "dp-sgd", "privacy.epsilon": 0.0}, "must be positive"),
    ({"privacy.mode": "dp-sgd", "strategy": "vit_avg"}, "not available for strategy 'vit_avg'"),
    ({"privacy.mode": "dp-sgd", "new-task.site": "pneumonia"}, "does not cover the new_task"),
])
def test_bad_privacy_settings_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_run_config(bad)


def test_a_private_round_reports_epsilon_and_no_training_loss():
    cfg = parse_run_config(PRIVATE)
    data = load_site_data(cfg, "blood")
    result, ledger = PrivateTraining(cfg.privacy, cfg.num_rounds).train(cfg.kind_site(), data, None, None, None, 1)
    per_round = steps_per_epoch(64, 16)
    assert ledger.rounds == [{"round": 1, "noise_multiplier": ledger.noise_multiplier,
                              "sample_rate": 1 / per_round, "steps": per_round}]
    assert result.metrics[EPSILON_SPENT] == pytest.approx(ledger.spent())
    assert 0 < result.metrics[EPSILON_SPENT] < 8.0 and result.metrics[PRIVACY_DELTA] == pytest.approx(1e-5)
    # What anyone needs to recompute epsilon travels with it.
    assert (result.metrics[NOISE_MULTIPLIER], result.metrics[SAMPLE_RATE], result.metrics[DP_STEPS]) == (
        ledger.noise_multiplier, 1 / per_round, per_round)
    assert math.isnan(result.metrics[wire.TRAIN_LOSS])
    assert any(f.E.abs().sum() > 0 for f in result.update.factors.values())  # it did train


def test_an_empty_poisson_batch_is_a_noise_only_step():
    cfg = parse_run_config(PRIVATE)
    data = load_site_data(cfg, "blood")
    model = cfg.kind_site().build_model(data, None, None)
    ledger = PrivacyLedger.plan(cfg.privacy, 64, 16, 1, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    stepper = private_steps(cfg.privacy, ledger, 64)(model, params, TrainConfig(orth_weight=0.0))
    head = model.head.weight.detach().clone()
    stepper.empty_step()
    stepper.close()
    assert stepper.steps == 1 and not torch.equal(model.head.weight, head)  # noise moved it


def test_private_fit_counts_its_steps():
    cfg = parse_run_config(PRIVATE)
    data = load_site_data(cfg, "pneumonia")
    model = cfg.kind_site().build_model(data, None, None)
    ledger = PrivacyLedger.plan(cfg.privacy, len(data.train), 16, 2, 1)
    result = fit(model, data.train, data.val, data.task, 28, TrainConfig(epochs=2, batch_size=16),
                 steps=private_steps(cfg.privacy, ledger, len(data.train)))
    assert result.steps == 2 * steps_per_epoch(len(data.train), 16)


def _train_message(site: str, server_round: int):
    content = RecordDict({wire.ARRAYS: client_app.ArrayRecord(), wire.CONFIG: client_app.ConfigRecord(
        {wire.SITE: site, wire.SERVER_ROUND: server_round, wire.RUN_KEY: "budget-test"})})
    return message(content, MessageType.TRAIN)


def test_a_site_refuses_to_train_past_its_budget_and_keeps_its_ledger(tmp_path):
    """Three rounds are planned; a round trained twice (after a crash, say) is counted twice, so the site
    refuses its fourth training, names the budget, and its ledger is unchanged by the refusal."""
    from flwr.app import Context

    run_config = {**PRIVATE, "sites": "blood"}
    context = Context(run_id=3, node_id=1, node_config={wire.NODE_SITE: "blood", wire.NODE_STATE_DIR: str(tmp_path)},
                      state=RecordDict(), run_config=run_config)
    spent = []
    for server_round in (1, 2, 2):
        reply = client_app.train(_train_message("blood", server_round), context)
        spent.append(reply.content[wire.METRICS][EPSILON_SPENT])
    assert spent[0] < spent[1] < spent[2] <= 8.0 + 0.01
    folder = state_folder(context.node_config, "budget-test")
    before = load_ledger(folder, "blood")
    with pytest.raises(PrivacyBudgetExhausted, match=r"site blood: privacy budget exhausted: it has spent epsilon"):
        client_app.train(_train_message("blood", 3), context)
    assert load_ledger(folder, "blood") == before and len(before.rounds) == 3


def test_an_unreadable_ledger_stops_the_site_instead_of_starting_a_new_budget(tmp_path):
    ledger = PrivacyLedger.plan(PrivacySettings(mode="dp-sgd"), 64, 16, 1, 1)
    save_ledger(tmp_path, "blood", ledger)
    assert load_ledger(tmp_path, "blood") == ledger
    (tmp_path / "blood" / "privacy.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="privacy ledger privacy.json is unreadable"):
        load_ledger(tmp_path, "blood")


def test_epsilon_survives_a_resume(tmp_path):
    """Stopped after round 2 and resumed, each site ends with the epsilon of three rounds, as in a run that was
    never stopped (epsilon depends on the noise, the sampling rate and the steps, not on the random draws)."""
    straight = message_federation.run(PRIVATE, tmp_path / "straight")
    message_federation.run(PRIVATE, tmp_path / "stopped", stop_after=2)
    (run_dir,) = (tmp_path / "stopped" / "runs").iterdir()  # the run key is its folder's name
    stopped = load_ledger(state_folder({wire.NODE_STATE_DIR: str(tmp_path / "stopped" / "state")}, run_dir.name),
                          "blood")
    assert [r["round"] for r in stopped.rounds] == [1, 2]
    client_app._parsed.cache_clear()  # a restarted site process
    resumed = message_federation.run(PRIVATE, tmp_path / "stopped", resume=True)
    assert set(resumed.privacy) == {"blood", "pneumonia"}
    for site in ("blood", "pneumonia"):
        assert resumed.privacy[site]["round"] == 3
        assert resumed.privacy[site]["epsilon"] == pytest.approx(straight.privacy[site]["epsilon"], rel=1e-9)
        assert resumed.privacy[site]["epsilon"] > stopped.spent()
        assert resumed.privacy[site]["epsilon"] <= 8.0 + 0.01
    # metrics.jsonl holds, per site and round, what recomputes each claim (none of it is private).
    events = [e for e in read_events(run_dir / "metrics.jsonl") if e["event"] == "privacy" and e["site"] == "blood"]
    assert [e["round"] for e in events] == [1, 2, 3]
    history = [(e["noise_multiplier"], e["sample_rate"], e["dp_steps"]) for e in events]
    assert epsilon_of(history, events[-1]["delta"], events[-1]["accountant"]) == pytest.approx(events[-1]["epsilon"],
                                                                                              rel=1e-9)
    # summary.json holds the same history: its claim recomputes from it alone, across the resume.
    summary = json.loads((run_dir / "summary.json").read_text())["privacy"]["sites"]["blood"]
    assert summary["history_rounds"] == [1, 2, 3] and summary["history"] == [list(h) for h in history]
    assert epsilon_of(summary["history"], summary["delta"], summary["accountant"]) == pytest.approx(
        summary["epsilon"], rel=1e-9)
    assert summary["epsilon"] == events[-1]["epsilon"] and summary["round"] == 3


def _without_privacy(reply):
    metrics = {k: v for k, v in reply.content[wire.METRICS].items() if k not in REPORTED}
    return message(RecordDict({**reply.content, wire.METRICS: MetricRecord(metrics)}), MessageType.TRAIN)


def _overspent(reply):
    metrics = {**reply.content[wire.METRICS], EPSILON_SPENT: 50.0}
    return message(RecordDict({**reply.content, wire.METRICS: MetricRecord(metrics)}), MessageType.TRAIN)


@pytest.mark.parametrize("tamper,reason", [(_without_privacy, "reports no privacy spent"),
                                           (_overspent, r"reports \(epsilon 50")])
def test_the_coordinator_refuses_an_update_that_is_not_private_enough(tmp_path, tamper, reason):
    strategy = message_federation.run({**PRIVATE, "num-rounds": 1, "min-sites": 1}, tmp_path,
                                      tamper={"pneumonia": tamper})
    assert strategy.status["pneumonia"]["state"] == "rejected"
    assert re.search(reason, strategy.status["pneumonia"]["reason"])
    assert strategy.status["blood"]["state"] == "merged" and set(strategy.privacy) == {"blood"}


def test_attack_quality_reads_auc_and_tpr_at_low_fpr():
    from fl_medlego.privacy.audit import attack_quality

    rng = np.random.default_rng(0)
    members = np.r_[np.ones(2000), np.zeros(2000)].astype(bool)
    same = attack_quality(rng.normal(size=4000), members)
    assert abs(same["auc"] - 0.5) < 0.03 and same["tpr_at_fpr"] < 0.03  # a useless attack
    shifted = attack_quality(rng.normal(size=4000) + 2.0 * members, members)
    assert shifted["auc"] > 0.9 and shifted["tpr_at_fpr"] > 0.2
    with pytest.raises(ValueError, match="both members and non-members"):
        attack_quality(np.zeros(3), np.ones(3))


def test_lira_calibrates_away_how_easy_each_image_is():
    """Images differ wildly in difficulty; membership adds a small shift. The loss threshold drowns in the
    difficulty, LiRA (difficulty measured on shadow models) finds the shift."""
    from fl_medlego.privacy.audit import attack_quality, lira_offline_scores

    rng = np.random.default_rng(1)
    n, members = 2000, np.r_[np.ones(1000), np.zeros(1000)].astype(bool)
    difficulty = rng.normal(scale=5.0, size=n)
    shadows = difficulty + rng.normal(scale=0.3, size=(4, n))
    target = difficulty + rng.normal(scale=0.3, size=n) + 0.6 * members
    assert attack_quality(target, members)["auc"] < 0.6
    assert attack_quality(lira_offline_scores(target, shadows), members)["auc"] > 0.85
    with pytest.raises(ValueError, match="at least 2 shadow"):
        lira_offline_scores(target, shadows[:1])


def test_per_example_confidence_is_the_logit_of_the_true_class_probability():
    from fl_medlego.data.sites import Split
    from fl_medlego.privacy.audit import per_example_outputs

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])[: len(x)]

    split = Split(torch.zeros(2, 28, 28, 1, dtype=torch.uint8), torch.tensor([[0], [2]]))
    losses, confidence = per_example_outputs(Fixed(), split, "multi-class", 28)
    p = torch.softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64), 1)[[0, 1], [0, 2]]
    np.testing.assert_allclose(confidence, torch.log(p / (1 - p)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(losses, -torch.log(p).numpy(), rtol=1e-9)


def test_privacy_mode_none_trains_exactly_as_before_privacy_existed():
    """These numbers were produced by the code before DP-SGD was added (commit ac46f3d) with the same call;
    `privacy.mode='none'` (the default) must give them (to the last digit here; the tolerance leaves room for
    another CPU's summation order, far below what any change to the training would move)."""
    cfg = parse_run_config({"sites": "blood", "data.max-train": 96, "data.max-eval": 48, "train.local-epochs": 2,
                            "privacy.mode": "none"})
    result = cfg.kind_site().train(load_site_data(cfg, "blood"), None, None)
    packed = cfg.kind_server().encode(result.update)[wire.PACKED].double()
    assert result.metrics == pytest.approx({"val-acc": 0.3125, "train-loss": 2.0898288091023765, "best-epoch": 2.0,
                                            "num-examples": 96.0}, rel=1e-6)
    assert float(packed.sum()) == pytest.approx(5.564199946136796, rel=1e-6)
    assert float(packed.abs().sum()) == pytest.approx(846.1970453527028, rel=1e-6)
    assert not set(REPORTED) & set(result.metrics)


def test_the_summary_states_each_sites_privacy():
    from fl_medlego.privacy.coordinator import PrivacyCheck, coordinator_layers, privacy_lines, summary_without_layer

    private = parse_run_config(PRIVATE)
    check = PrivacyCheck(private.privacy)
    check.record(2, {"blood": {EPSILON_SPENT: 5.5, PRIVACY_DELTA: 1e-5, NOISE_MULTIPLIER: 1.2, SAMPLE_RATE: 0.25,
                               DP_STEPS: 4.0}})
    check.record(3, {"blood": {EPSILON_SPENT: 7.991, PRIVACY_DELTA: 1e-5, NOISE_MULTIPLIER: 1.1, SAMPLE_RATE: 0.25,
                               DP_STEPS: 4.0}})
    summary = check.summary()
    assert summary == {"mode": "dp-sgd", "epsilon_budget": 8.0, "accountant": "rdp", "max_grad_norm": 1.0,
                       "sites": {"blood": {"epsilon": 7.991, "delta": 1e-5, "round": 3, "accountant": "rdp",
                                           "history": [[1.2, 0.25, 4.0], [1.1, 0.25, 4.0]],
                                           "history_rounds": [2, 3]}}}
    assert "| blood | 7.991 | 1e-05 | 3 |" in privacy_lines(summary)
    # A resumed layer goes on from the state's history.
    again = PrivacyCheck(private.privacy, json.loads(json.dumps(check.state())))
    again.record(4, {"blood": {EPSILON_SPENT: 7.995, PRIVACY_DELTA: 1e-5, NOISE_MULTIPLIER: 1.0, SAMPLE_RATE: 0.25,
                               DP_STEPS: 1.0}})
    assert again.state()["blood"]["history_rounds"] == [2, 3, 4] and check.state()["blood"]["history_rounds"] == [2, 3]
    assert coordinator_layers(parse_run_config({}).privacy, {}) == []
    assert summary_without_layer(parse_run_config({}).privacy) == {"mode": "none"}
    assert "no differential privacy" in privacy_lines({"mode": "none"})[1]


class _OtherLayer:
    name = "audit-log"

    def summary(self) -> dict:
        return {"mode": "not privacy"}


def test_the_summary_finds_the_privacy_layer_by_name_among_the_installed_layers():
    from fl_medlego.privacy.coordinator import LAYER_NAME, coordinator_layers, privacy_summary

    private, plain = parse_run_config(PRIVATE).privacy, parse_run_config({}).privacy
    layers = [_OtherLayer(), *coordinator_layers(private, {})]
    assert layers[1].name == LAYER_NAME
    assert privacy_summary(layers, private)["mode"] == "dp-sgd"
    assert privacy_summary([_OtherLayer()], plain) == {"mode": "none"}


def test_a_private_comparison_refuses_rows_that_cannot_be_private(tmp_path):
    from fl_medlego.compare.run import Comparison

    with pytest.raises(ValueError, match=r"\['vit_avg', 'multitask'\] cannot train with DP-SGD"):
        Comparison({"privacy.mode": "dp-sgd"}, ["medlego", "vit_avg", "multitask"], [0], tmp_path, tmp_path / "c")
    Comparison({"privacy.mode": "dp-sgd"}, ["medlego", "task_arithmetic"], [0], tmp_path, tmp_path / "c")


@pytest.mark.parametrize("reason", [
    # simulation (Ray actor) and deployment (SuperNode) wrappings of the same ClientApp exception
    "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. Message: "
    "site blood: privacy budget exhausted: it has spent epsilon 7.997 of 8'>",
    "<class 'fl_medlego.privacy.accountant.PrivacyBudgetExhausted'>:<'site blood: privacy budget exhausted: it has "
    "spent epsilon 7.997 of 8'>",
])
def test_the_coordinator_shows_the_sites_refusal_not_flowers_wrapping(reason):
    from fl_medlego.server.replies import bounded, site_error_text

    assert bounded(site_error_text(reason)).startswith("site blood: privacy budget exhausted: it has spent epsilon")
    assert site_error_text("node stopped its heartbeat") == "node stopped its heartbeat"
    long = site_error_text(reason.replace("8'>", "8" + "x" * 2000 + "'>"))  # cut before Flower's closing
    assert long.startswith("site blood: privacy budget exhausted")


@pytest.mark.parametrize("num_train,members,shadows", [(4000, 500, 4), (546, 500, 4)])
def test_audit_splits_keep_members_non_members_and_shadows_apart(num_train, members, shadows):
    from fl_medlego.privacy.audit import audit_splits

    labels = np.random.default_rng(3).choice(3, size=num_train, p=[0.7, 0.2, 0.1])
    parts = audit_splits(labels, members, shadows, seed=0)
    m, n = set(parts["members"]), set(parts["non_members"])
    assert abs(len(m) - len(n)) <= 1 and len(m) + len(n) == 2 * min(members, num_train // 4) and not m & n
    # the same class mix among members and non-members (to one image per class)
    for value in range(3):
        assert abs((labels[parts["members"]] == value).sum() - (labels[parts["non_members"]] == value).sum()) <= 1
    assert len(parts["shadows"]) == shadows
    for k, index in enumerate(parts["shadows"]):
        assert len(set(index)) == min(members, num_train // 4) and not set(index) & (m | n)  # no shadow saw one
        if num_train >= (2 + shadows) * members:
            assert all(not set(index) & set(other) for other in parts["shadows"][k + 1:])
            share = (labels[index] == 0).mean()
            assert abs(share - 0.7) < 0.03  # shadows have the population's mix too


def test_a_private_comparison_trains_its_specialists_and_its_rounds_with_dp_sgd(tmp_path):
    """The one-shot specialists go through the privacy layer, and the federated row is a private federation of
    the real apps (each site's ledger, the coordinator's check), not a round without the ledger."""
    from pathlib import Path

    from fl_medlego.cli.local_run import run_local_federation
    from fl_medlego.compare.run import Comparison

    config = {**PRIVATE, "num-rounds": 2}
    results = Comparison(config, ["medlego"], [0], tmp_path / "out", tmp_path / "cache", rounds=(1, 2),
                         federate=run_local_federation).run()
    specialists = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("metrics.json")]
    assert len(specialists) == 2 and all(0 < m[EPSILON_SPENT] <= 8.0 + 0.01 for m in specialists)
    federated = results["rows"]["medlego (2 rounds)"]["0"]
    summary = json.loads((Path(federated["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "completed" and set(summary["privacy"]["sites"]) == {"blood", "pneumonia"}
    assert all(s["round"] == 2 and 0 < s["epsilon"] <= 8.0 + 0.01 for s in summary["privacy"]["sites"].values())
