"""Backbones: one shared seeded base, local checkpoints, the GPU preset's adapter shapes (no download)."""

import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from fl_medlego.bases import bundled_base_path
from fl_medlego.config import parse_run_config
from fl_medlego.errors import ConfigError
from fl_medlego.models import create_backbone, fingerprint, list_presets, preset_image_size, shared_base


@pytest.mark.parametrize("name", list_presets())
def test_every_project_preset_is_a_timm_model(name):
    model = timm.create_model(name, num_classes=0)
    size = timm.get_pretrained_cfg(name).input_size
    assert preset_image_size(name) == size[-1]
    features = model(torch.zeros(2, *size))
    assert features.shape == (2, model.num_features)
    if bundled_base_path(name).is_file():  # the shipped base fits the registered architecture exactly
        bundled = create_backbone(name, pretrained="bundled")
        assert set(bundled.state_dict()) == set(model.state_dict())


def test_the_default_preset_is_registered():
    assert "vit_medmnist_28" in list_presets() and "vit_medmnist_28" in timm.list_models()


def test_seeded_base_is_identical_across_builds():
    assert fingerprint(create_backbone(seed=0)) == fingerprint(create_backbone(seed=0))
    assert fingerprint(create_backbone(seed=0)) != fingerprint(create_backbone(seed=1))


def test_local_checkpoint_loads(tmp_path):
    source = create_backbone(seed=5)
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert fingerprint(create_backbone(pretrained=str(path), seed=0)) == fingerprint(source)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint .* not found"):
        create_backbone(pretrained=str(tmp_path / "nope.pt"))


def test_vit_base_preset_adapts_q_and_v_of_every_block():
    cfg = parse_run_config({"model.name": "vit_base_patch16_224"})
    template = cfg.kind_server().template()
    assert len(template) == 24 and set(template.values()) == {(768, 768)}


def test_shared_base_is_built_once_and_handed_out_as_independent_copies():
    first, fp = shared_base("vit_medmnist_28", "none", 3)
    assert fp == fingerprint(create_backbone(seed=3)) == fingerprint(first)
    with torch.no_grad():
        next(first.parameters()).add_(1.0)  # a site that (wrongly) edits its copy
    second, fp2 = shared_base("vit_medmnist_28", "none", 3)
    assert fp2 == fp == fingerprint(second) != fingerprint(first)


def test_shared_base_sees_a_rewritten_checkpoint(tmp_path):
    path = tmp_path / "base.safetensors"
    for seed in (1, 2):
        source = create_backbone(seed=seed)
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
        os.utime(path, ns=(seed * 10**9, seed * 10**9))  # distinct mtimes even on coarse filesystems
        assert shared_base("vit_medmnist_28", str(path), 0)[1] == fingerprint(source)
