"""The coordinator's base-fingerprint policy (`federation_base` in server/app.py): the base every site must
share comes from the run's own configuration, a declared model.fingerprint must be the configured base's,
a coordinator without the base's weights works only when it is told the fingerprint, and a run folder
resumes only on the base it was run on."""

import os

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, MetricRecord, RecordDict
from safetensors.torch import save_file

from fl_medlego import wire
from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.config import parse_run_config, settings_table
from fl_medlego.lora import Adapter, Factors
from fl_medlego.models import create_backbone, shared_base
from fl_medlego.results import RunResults
from fl_medlego.server.app import RESUMABLE_CHANGES, federation_base, run_federation
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.server.strategy import RoundFailed, SiteMergeStrategy

RANDOM_BASE = {"model.pretrained": "none"}  # the preset's seeded random init: no checkpoint to read


def random_base_fingerprint(seed: int = 0) -> str:
    return shared_base("vit_medmnist_28", "none", seed)[1]


def write_checkpoint(path, seed: int, mtime_ns: int):
    """A backbone checkpoint of the default preset (its weights drawn with `seed`), with a chosen mtime so that
    a rewritten file is a new base to shared_base's cache."""
    weights = create_backbone("vit_medmnist_28", seed=seed).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_a_declared_fingerprint_that_is_not_the_configured_bases_is_refused_naming_both():
    """The full kind builds the base anyway (it needs its weights): a declaration that does not match is refused."""
    real = random_base_fingerprint()
    cfg = parse_run_config({**RANDOM_BASE, "strategy": "vit_avg", "model.fingerprint": "ffff0000"})
    with pytest.raises((RuntimeError, ValueError), match=f"model.fingerprint ffff0000 .*{real}"):
        federation_base(cfg)


def test_an_adapter_run_holds_its_sites_to_the_declared_fingerprint(tmp_path):
    """The adapter kind takes a declared fingerprint as the base (the coordinator may not have its weights):
    sites on the configured base's weights are then refused, and the refusal names both fingerprints."""
    real = random_base_fingerprint()
    cfg = parse_run_config({**RANDOM_BASE, "model.fingerprint": "ffff0000", "sites": "blood"})
    declared, reference = federation_base(cfg)
    assert (declared, reference) == ("ffff0000", None)
    set_task_identity()
    template = {"blocks.0.attn.qkv.q": (8, 8)}
    strategy = SiteMergeStrategy({"blood": 11}, template, cfg, RunResults(tmp_path, {}), declared)
    gen = torch.Generator().manual_seed(0)
    adapter = Adapter({"blocks.0.attn.qkv.q": Factors(torch.randn(8, 2, generator=gen), torch.ones(2),
                                                      torch.randn(2, 8, generator=gen))})
    reply = message(RecordDict({
        wire.ARRAYS: ArrayRecord(wire.encode_adapter(adapter)),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 10.0, wire.VAL_ACC: 0.5, wire.TRAIN_LOSS: 1.0,
                                    wire.BEST_EPOCH: 1.0}),
        wire.SITE_INFO: ConfigRecord({wire.SITE: "blood", wire.BASE_FINGERPRINT: real, wire.DATA_SOURCE: "x"}),
    }), MessageType.TRAIN, src=11, dst=0)
    with pytest.raises(RoundFailed, match=f"base model {real} differs from the federation's ffff0000"):
        strategy.aggregate_train(1, [reply])


def test_the_configured_bases_own_fingerprint_is_accepted():
    real = random_base_fingerprint()
    assert federation_base(parse_run_config(RANDOM_BASE)) == (real, None)  # adapters need no reference
    assert federation_base(parse_run_config({**RANDOM_BASE, "model.fingerprint": real})) == (real, None)
    fingerprint, reference = federation_base(parse_run_config({**RANDOM_BASE, "strategy": "vit_avg",
                                                               "model.fingerprint": real}))
    base = shared_base("vit_medmnist_28", "none", 0)[0].state_dict()
    assert fingerprint == real and reference.keys() == base.keys()
    assert all(torch.equal(reference[k], base[k]) for k in base)  # round 1 measures changes from the base itself
    assert random_base_fingerprint(seed=1) != real  # the fingerprint tells bases apart


def test_a_coordinator_without_the_base_needs_the_declared_fingerprint(tmp_path):
    missing = str(tmp_path / "not-here.safetensors")
    declared = parse_run_config({"model.pretrained": missing, "model.fingerprint": "abc123"})
    assert federation_base(declared) == ("abc123", None)  # the file is never read
    with pytest.raises((RuntimeError, ValueError), match="cannot build the base model.*set model.fingerprint"):
        federation_base(parse_run_config({"model.pretrained": missing}))


def test_the_full_kind_needs_the_bases_weights_even_with_a_declared_fingerprint(tmp_path):
    """Whole backbones are measured against the weights the round starts from: no fingerprint replaces them."""
    cfg = parse_run_config({"model.pretrained": str(tmp_path / "not-here.safetensors"), "strategy": "vit_avg",
                            "model.fingerprint": "abc123"})
    with pytest.raises((RuntimeError, ValueError), match="cannot build the base model.*not-here.safetensors"):
        federation_base(cfg)


def test_the_full_kinds_missing_base_error_does_not_ask_for_the_fingerprint_it_has(tmp_path):
    from fl_medlego.errors import ConfigError

    cfg = parse_run_config({"model.pretrained": str(tmp_path / "not-here.safetensors"), "strategy": "vit_avg",
                            "model.fingerprint": "abc123"})
    with pytest.raises(ConfigError, match="needs them too: make model.pretrained readable here") as refused:
        federation_base(cfg)
    assert "set model.fingerprint" not in str(refused.value)


class SitesWereAskedFor(Exception):
    """Raised by the grid: the coordinator got past its base checks and went on to discover the sites."""


class UnreachableGrid:
    def get_node_ids(self):
        raise SitesWereAskedFor

    def send_and_receive(self, *args, **kwargs):
        raise SitesWereAskedFor


def stopped_run(run_dir, run_config: dict, base_fingerprint: str, update=None):
    """A run folder whose round 1 completed on `base_fingerprint` (as the strategy commits it), for
    `resume=run_dir`; `update`: the combined update the round saved (what a resumed run loads)."""
    cfg = parse_run_config({**run_config, "resume": str(run_dir)})
    results = RunResults(run_dir, {k: v for k, v in settings_table(cfg).items() if k not in RESUMABLE_CHANGES})
    if update is not None:
        cfg.kind_server().save(update, results.staging_dir(1), base_fingerprint)
    results.finish_round(1, {"round": 1, "status": {}, "specialist": {}, "merged": {},
                             "base_fingerprint": base_fingerprint})
    return Context(run_id=3, node_id=0, node_config={}, state=RecordDict(),
                   run_config={**run_config, "resume": str(run_dir)})


def test_a_run_folder_resumes_only_with_its_declared_fingerprint(tmp_path):
    run_config = {"sites": "blood,breast", "num-rounds": 2, "model.fingerprint": "abc123",
                  "model.pretrained": str(tmp_path / "not-here.safetensors")}
    context = stopped_run(tmp_path / "run", run_config, "def456")
    with pytest.raises(RuntimeError, match="was run on base def456, not abc123"):
        run_federation(UnreachableGrid(), context)


def test_a_run_folder_does_not_resume_on_a_rewritten_checkpoint(tmp_path):
    """Same settings, same checkpoint path, other weights in the file: the fingerprint refuses the resume,
    and the unchanged file passes the same check (the coordinator goes on to ask for its sites)."""
    checkpoint = write_checkpoint(tmp_path / "base.safetensors", seed=0, mtime_ns=1_000_000_000_000_000_000)
    run_config = {"sites": "blood,breast", "num-rounds": 2, "strategy": "vit_avg", "model.pretrained": str(checkpoint)}
    first = shared_base("vit_medmnist_28", str(checkpoint), 0)[1]
    weights = create_backbone("vit_medmnist_28", seed=0).state_dict()
    context = stopped_run(tmp_path / "run", run_config, first, update=weights)
    with pytest.raises(SitesWereAskedFor):  # the same base: past the check
        run_federation(UnreachableGrid(), context)

    write_checkpoint(checkpoint, seed=1, mtime_ns=1_000_000_001_000_000_000)
    second = shared_base("vit_medmnist_28", str(checkpoint), 0)[1]
    assert second != first
    with pytest.raises(RuntimeError, match=f"was run on base {first}, not {second}"):
        run_federation(UnreachableGrid(), context)
