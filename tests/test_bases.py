"""The shipped base: it loads into the default preset, its card names its exact bytes, the scenarios use it."""

import re
import tomllib
from pathlib import Path

import pytest

from fl_medlego.bases import BUNDLED, bundled_base, model_card
from fl_medlego.config import DEFAULTS, parse_run_config
from fl_medlego.models import create_backbone, fingerprint
from fl_medlego.pretrain import file_sha256

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_base_loads_into_the_default_preset_and_is_not_the_random_init():
    base = create_backbone("vit_medmnist_28", pretrained=BUNDLED)  # load_checkpoint refuses missing keys
    assert fingerprint(base) != fingerprint(create_backbone("vit_medmnist_28", seed=0))
    assert bundled_base("vit_medmnist_28").stat().st_size <= 25 * 2**20


def test_model_card_records_the_shipped_file_hash():
    card = model_card("vit_medmnist_28").read_text()
    recorded = re.search(r"SHA-256: `([0-9a-f]{64})`", card)
    assert recorded, "the model card must state the file's SHA-256"
    assert recorded.group(1) == file_sha256(bundled_base("vit_medmnist_28"))
    for section in ("## Recipe", "## Every candidate tried", "## Evaluation protocol"):
        assert section in card


def test_default_config_and_every_scenario_use_the_bundled_base():
    assert DEFAULTS["model.pretrained"] == BUNDLED == parse_run_config({}).pretrained
    for pyproject in sorted((ROOT / "scenarios").glob("*/pyproject.toml")):
        config = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
        assert config["model"]["pretrained"] == BUNDLED, pyproject


def test_no_bundled_base_for_other_models_is_a_clear_error():
    with pytest.raises(ValueError, match="ships a pretrained base only for.*'timm'"):
        create_backbone("vit_base_patch16_224", pretrained=BUNDLED)
