"""Backbones: one shared seeded base, local checkpoints, the GPU preset's adapter shapes (no download)."""

import pytest
from safetensors.torch import save_file

from fl_medlego.config import parse_run_config
from fl_medlego.models import create_backbone, fingerprint
from fl_medlego.site import adapter_template


def test_seeded_base_is_identical_across_builds():
    assert fingerprint(create_backbone(seed=0)) == fingerprint(create_backbone(seed=0))
    assert fingerprint(create_backbone(seed=0)) != fingerprint(create_backbone(seed=1))


def test_local_checkpoint_loads(tmp_path):
    source = create_backbone(seed=5)
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert fingerprint(create_backbone(pretrained=str(path), seed=0)) == fingerprint(source)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .* not found"):
        create_backbone(pretrained=str(tmp_path / "nope.pt"))


def test_vit_base_preset_adapts_q_and_v_of_every_block():
    template = adapter_template(parse_run_config({"model.name": "vit_base_patch16_224"}))
    assert len(template) == 24 and set(template.values()) == {(768, 768)}
