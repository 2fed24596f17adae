"""SVD-LoRA: zero at init, Q and V rows only, round trips, the regulariser."""

import pytest
import torch
from torch import nn

from fl_medlego.lora import (
    SVDLoRAConfig,
    adapter_updates,
    get_adapter,
    inject_svd_lora,
    load_adapter,
    orthogonality_penalty,
    save_adapter,
    set_adapter,
)
from fl_medlego.models import create_backbone


@pytest.fixture
def vit():
    return create_backbone("vit_medmnist_28", num_classes=0, seed=0)


def test_update_is_exactly_zero_at_init(vit):
    x = torch.randn(2, 3, 28, 28)
    before = vit(x)
    inject_svd_lora(vit, SVDLoRAConfig(rank=4))
    assert torch.equal(vit(x), before)
    assert all(torch.count_nonzero(u.delta_weight()) == 0 for u in adapter_updates(vit).values())


def test_qkv_adapts_only_q_and_v_rows(vit):
    inject_svd_lora(vit, SVDLoRAConfig(rank=4, targets=("attn.qkv",)))
    qkv = vit.blocks[0].attn.qkv
    d = qkv.base.in_features
    with torch.no_grad():
        for update in qkv.updates.values():
            update.lora_E.fill_(1.0)
    x = torch.randn(5, d)
    change = qkv(x) - qkv.base(x)
    assert change[:, :d].abs().max() > 0  # Q rows move
    assert torch.equal(change[:, d:2 * d], torch.zeros(5, d))  # K rows untouched
    assert change[:, 2 * d:].abs().max() > 0  # V rows move
    names = set(adapter_updates(vit))
    assert names == {f"blocks.{i}.attn.qkv.{p}" for i in range(6) for p in "qv"}


def test_base_is_frozen_and_only_factors_train(vit):
    inject_svd_lora(vit, SVDLoRAConfig(rank=2, targets=("attn.qkv", "mlp.fc1")))
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "lora_E") for n in trainable)
    assert "blocks.0.mlp.fc1" in adapter_updates(vit)  # a plain nn.Linear target works too


def test_plain_linear_update_matches_delta_weight():
    base = nn.Linear(6, 5)
    model = nn.Sequential(base)
    inject_svd_lora(model, SVDLoRAConfig(rank=3, alpha=6.0, targets=("0",)))
    update = adapter_updates(model)["0"]
    with torch.no_grad():
        update.lora_E.copy_(torch.tensor([1.0, -2.0, 0.5]))
    x = torch.randn(4, 6)
    expected = x @ (base.weight + update.delta_weight()).T + base.bias
    torch.testing.assert_close(model(x), expected)
    assert update.scale == 2.0  # alpha / rank is a true division


def test_unknown_target_is_an_error(vit):
    with pytest.raises(ValueError, match="match no nn.Linear"):
        inject_svd_lora(vit, SVDLoRAConfig(targets=("attn.qvk",)))


def test_save_load_round_trip_is_bit_identical(vit, tmp_path):
    inject_svd_lora(vit, SVDLoRAConfig(rank=4))
    with torch.no_grad():
        for u in adapter_updates(vit).values():
            u.lora_E.normal_()
    adapter = get_adapter(vit, metadata={"site": "blood"})
    loaded = load_adapter(save_adapter(adapter, tmp_path / "a"))
    assert loaded.scale == adapter.scale and loaded.metadata == {"site": "blood"}
    assert sorted(loaded.factors) == sorted(adapter.factors)
    for name, f in adapter.factors.items():
        for a, b in zip((f.B, f.E, f.A), (loaded.factors[name].B, loaded.factors[name].E, loaded.factors[name].A)):
            assert torch.equal(a, b)
    other = inject_svd_lora(create_backbone(seed=0), SVDLoRAConfig(rank=4))
    set_adapter(other, loaded)
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(other(x), vit(x))


def test_load_adapter_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tmp_path)


def test_regulariser_is_zero_on_orthonormal_factors():
    model = nn.Sequential(nn.Linear(16, 12))
    inject_svd_lora(model, SVDLoRAConfig(rank=4, targets=("0",)))
    update = adapter_updates(model)["0"]
    with torch.no_grad():
        update.lora_B.copy_(torch.linalg.qr(torch.randn(12, 4))[0])
        update.lora_A.copy_(torch.linalg.qr(torch.randn(16, 4))[0].T)
    assert orthogonality_penalty(model).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        update.lora_B.mul_(2.0)
    assert orthogonality_penalty(model).item() == pytest.approx(4 * 3.0 ** 2, rel=1e-5)  # (4 - 1)^2 per column


def test_config_validation():
    with pytest.raises(ValueError, match="rank"):
        SVDLoRAConfig(rank=0)
    with pytest.raises(ValueError, match="Unknown SVD-LoRA config keys"):
        SVDLoRAConfig.from_dict({"rnak": 4})


def test_a_saved_adapter_describes_itself_and_refuses_another_base_or_targets(vit, tmp_path):
    import json

    from fl_medlego.models import fingerprint

    config = SVDLoRAConfig(rank=4, alpha=6.0)
    base_print = fingerprint(vit)
    inject_svd_lora(vit, config)
    folder = save_adapter(get_adapter(vit), tmp_path / "a", config, "vit_medmnist_28", base_print)
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["svd_lora"] == {"rank": 4, "alpha": 6.0, "targets": ["attn.qkv"], "init_std": config.init_std,
                                 "orth_weight": config.orth_weight}
    assert saved["base_model_name_or_path"] == "vit_medmnist_28" and saved["base_model_fingerprint"] == base_print
    load_adapter(folder, expect_lora=config, expect_base="vit_medmnist_28", expect_fingerprint=base_print)
    with pytest.raises(ValueError, match=r"adapts \['attn.qkv'\].*targets \['attn.proj'\]"):
        load_adapter(folder, expect_lora=SVDLoRAConfig(targets=("attn.proj",)))
    with pytest.raises(ValueError, match="'vit_medmnist_28', not 'vit_base_patch16_224'"):
        load_adapter(folder, expect_base="vit_base_patch16_224")
    with pytest.raises(ValueError, match=f"{base_print}, but these are 0123"):
        load_adapter(folder, expect_fingerprint="0123")


def test_merging_saved_adapters_of_different_bases_is_refused(vit, tmp_path):
    from fl_medlego.offline_merge import merge_saved_adapters

    inject_svd_lora(vit, SVDLoRAConfig(rank=2))
    adapter = get_adapter(vit)
    save_adapter(adapter, tmp_path / "a", SVDLoRAConfig(rank=2), "vit_medmnist_28", "aaaa")
    save_adapter(adapter, tmp_path / "b", SVDLoRAConfig(rank=2), "vit_medmnist_28", "bbbb")
    with pytest.raises(ValueError, match="base weights aaaa, but these are bbbb|base weights bbbb, but these are aaaa"):
        merge_saved_adapters([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
    save_adapter(adapter, tmp_path / "c", SVDLoRAConfig(rank=2), "vit_medmnist_28", "aaaa")
    merged = merge_saved_adapters([tmp_path / "a", tmp_path / "c"], tmp_path / "out")
    assert load_adapter(tmp_path / "out", expect_fingerprint="aaaa").factors.keys() == merged.factors.keys()


def test_a_corrupt_adapter_file_is_named(vit, tmp_path):
    inject_svd_lora(vit, SVDLoRAConfig(rank=2))
    folder = save_adapter(get_adapter(vit), tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a crash while copying
    with pytest.raises(ValueError, match="adapter_model.safetensors is not a readable safetensors file"):
        load_adapter(folder)
    (folder / "adapter_config.json").write_text("{")
    with pytest.raises(ValueError, match="adapter_config.json is not valid JSON"):
        load_adapter(folder)
