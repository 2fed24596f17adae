"""Offline pretraining: the generators, augmentation, objectives, the resumable runner, the evaluation protocol."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fl_medlego.augment import AugmentConfig, augment
from fl_medlego.cli import main
from fl_medlego.models import create_backbone, fingerprint
from fl_medlego.pretrain import PretrainSettings, ProtocolSettings, pretrain, render_markdown, run_protocol, table_rows
from fl_medlego.pretrain import evaluate as protocol
from fl_medlego.pretrain.card import ship_base
from fl_medlego.pretrain.evaluate import file_sha256
from fl_medlego.pretrain.fractals import fill_rates, fractal_dataset, render, sample_categories
from fl_medlego.pretrain.natural import SOURCES, random_crops
from fl_medlego.pretrain.objectives import SimCLRObjective
from fl_medlego.pretrain.procedural import dead_leaves, procedural_dataset, spectral_noise


def test_fractal_categories_are_contractive_and_fill_the_canvas():
    categories = sample_categories(12, np.random.default_rng(0), min_fill=0.12)
    linear = categories[..., :4].reshape(12, -1, 2, 2)
    assert np.linalg.svd(linear, compute_uv=False).max() < 1.0
    assert (fill_rates(categories, seed=3) >= 0.08).all()  # another orbit of the same attractor: close to the filter


def test_fractal_instances_share_a_shape_and_categories_differ():
    rng = np.random.default_rng(1)
    categories = sample_categories(2, rng)
    images = render(categories, np.array([0, 0, 1]), rng).astype(float)
    assert images.shape == (3, 32, 32, 3) and images.dtype == float
    masks = images.max(-1) > 0.3 * 255
    same = (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()
    other = (masks[0] & masks[2]).sum() / (masks[0] | masks[2]).sum()
    assert same > other


def test_colour_scheme_categories_pair_a_shape_with_a_fixed_palette():
    images, labels = fractal_dataset(6, 8, seed=0, colour_schemes=3)  # 2 shapes x 3 palettes
    assert sorted(set(labels.tolist())) == list(range(6))
    masks = images.max(-1) > 0.3 * 255

    def mean_colour(label):  # mean foreground colour of every image of a category
        return np.stack([images[i][masks[i]].mean(0) for i in np.flatnonzero(labels == label)])

    # One category (shape 0, palette 0) keeps its colours; the same shape in palette 1 (label 1) differs.
    spread = np.abs(mean_colour(0) - mean_colour(0).mean(0)).mean()
    other = np.abs(mean_colour(1).mean(0) - mean_colour(0).mean(0)).mean()
    assert spread < other
    with pytest.raises(ValueError, match="colour schemes"):
        fractal_dataset(7, 2, seed=0, colour_schemes=3)


def test_procedural_and_natural_images_are_seeded_uint8_rgb():
    makers = [lambda s: dead_leaves(4, np.random.default_rng(s)), lambda s: spectral_noise(4, np.random.default_rng(s)),
              lambda s: procedural_dataset(6, s), lambda s: random_crops(5, s)]
    for make in makers:
        a, b, c = make(0), make(0), make(1)
        assert a.dtype == np.uint8 and a.shape[1:] == (32, 32, 3)
        assert np.array_equal(a, b) and not np.array_equal(a, c)
        assert a.std() > 5  # not blank


def test_natural_sources_exclude_medical_images():
    assert not {"retina", "immunohistochemistry", "cell", "microaneurysms"} & set(SOURCES)


def test_augment_draws_per_image_parameters_in_model_range():
    images = torch.from_numpy(np.repeat(random_crops(1, 0), 8, axis=0))
    x = augment(images, 28, AugmentConfig(), torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert not torch.allclose(x[0], x[1])  # same source image, different views
    y = augment(images, 28, AugmentConfig(), torch.Generator().manual_seed(0))
    assert torch.equal(x, y)


def test_simclr_loss_is_low_for_matching_views_and_high_for_mismatched():
    torch.manual_seed(0)
    objective = SimCLRObjective(16)
    features = torch.randn(32, 16)
    matched = objective(torch.cat([features, features + 0.01 * torch.randn(32, 16)]))
    mismatched = objective(torch.cat([features, torch.randn(32, 16)]))
    assert matched < mismatched - 1.0


@pytest.mark.parametrize("recipe", ["fractal-sup", "natural-simclr", "mixed-mim"])
def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path, recipe):
    settings = PretrainSettings(recipe, steps=4, batch_size=8, images=64)
    straight = pretrain(settings, tmp_path / "straight", save_every=2, progress=False)
    assert pretrain(settings, tmp_path / "pieces", save_every=1, progress=False, stop_after=2) is None
    assert not (tmp_path / "pieces" / "backbone.safetensors").exists()
    resumed = pretrain(settings, tmp_path / "pieces", save_every=1, progress=False)
    assert resumed["fingerprint"] == straight["fingerprint"]
    weights = load_file(str(tmp_path / "pieces" / "backbone.safetensors"))
    assert fingerprint(create_backbone(pretrained=str(tmp_path / "pieces" / "backbone.safetensors"))) == \
        straight["fingerprint"]
    assert not any(k.startswith(("classifier", "projector")) for k in weights)  # the backbone alone
    assert straight["fingerprint"] != fingerprint(create_backbone(seed=0))  # training changed the weights


def test_device_auto_falls_back_to_cpu_and_a_missing_gpu_is_named(monkeypatch):
    from fl_medlego.pretrain.runner import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU.*--device cpu"):
        resolve_device("cuda")


def test_resume_with_other_settings_is_refused_and_keeps_the_run(tmp_path):
    pretrain(PretrainSettings("natural-simclr", steps=1, batch_size=4, images=16), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        pretrain(PretrainSettings("natural-simclr", steps=1, batch_size=8, images=16), tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown pretraining recipe 'fractals'.*fractal-sup"):
        PretrainSettings("fractals", steps=1)


def test_pretrain_cli_lists_recipes_and_trains(tmp_path, capsys):
    assert main(["pretrain-base", "--list"]) == 0
    assert "procedural-simclr" in capsys.readouterr().out
    assert main(["pretrain-base", "--recipe", "procedural-simclr", "--steps", "1", "--batch-size", "4",
                 "--images", "16", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "backbone.safetensors").is_file() and (tmp_path / "pretrain.json").is_file()
    assert main(["pretrain-base", "--recipe", "nope", "--steps", "1", "-o", str(tmp_path / "x")]) == 2


def test_protocol_scores_every_base_resumes_and_tabulates(tmp_path, monkeypatch):
    pretrain(PretrainSettings("natural-simclr", steps=2, batch_size=8, images=32), tmp_path / "base", progress=False)
    base = str(tmp_path / "base" / "backbone.safetensors")
    settings = ProtocolSettings("bundled", max_train=48, tasks=("breast", "pneumonia"), epochs=1)
    results = run_protocol({"tiny": base}, settings, tmp_path / "eval")
    assert set(results["rows"]) == {f"{b}/{m}/{t}" for b, m in [("random-init", "lora"), ("tiny", "lora"),
                                                               ("random-init", "full")] for t in settings.tasks}
    for row in results["rows"].values():  # an accuracy over the task's test split: a whole number right
        assert row["train_images"] == 48 and row["test_images"] > 0
        assert row["acc"] * row["test_images"] == pytest.approx(round(row["acc"] * row["test_images"]), abs=1e-6)
    assert results["bases"]["tiny"] == protocol.file_sha256(base)

    calls = []
    monkeypatch.setattr(protocol, "evaluate_one", lambda *a: calls.append(a))
    run_protocol({"tiny": base}, settings, tmp_path / "eval")
    assert calls == []  # every row was already there
    with pytest.raises(ValueError, match="other protocol settings"):
        run_protocol({"tiny": base}, ProtocolSettings("bundled", max_train=10), tmp_path / "eval")
    # A new candidate later, without the old file: the earlier base keeps its rows and hash.
    results = run_protocol({}, settings, tmp_path / "eval")
    assert calls == [] and results["bases"]["tiny"] == protocol.file_sha256(base)
    assert "tiny/lora/breast" in results["rows"]
    assert "data_root" not in results["settings"] and results["settings"]["data"] == "bundled sample"

    rows = {r["model"]: r for r in table_rows(results)}
    tiny = rows["tiny + SVD-LoRA"]
    assert tiny["breast_gain"] == pytest.approx(tiny["breast_acc"] - rows["random-init + SVD-LoRA"]["breast_acc"])
    assert "random-init, full fine-tuning" in rows
    assert rows["MedMNIST v2 ResNet-18 (28 px), reference"]["breast_acc"] == 0.863
    assert "| tiny + SVD-LoRA |" in render_markdown(results)
    json.dumps(results)  # the file the protocol writes is plain JSON


def test_ship_base_writes_weights_and_a_card_from_the_measurements(tmp_path):
    run = tmp_path / "run"
    pretrain(PretrainSettings("fractal-sup", steps=1, batch_size=4, images=16), run, progress=False)
    settings = ProtocolSettings("bundled", max_train=32, tasks=("breast",), epochs=1)
    results = run_protocol({"fractal": str(run / "backbone.safetensors")}, settings, tmp_path / "eval",
                           full_finetune=False)
    weights, card = ship_base(run, tmp_path / "eval", "fractal", tmp_path / "pkg" / "base",
                              {"fractal": run}, next_steps="Train longer.")
    text = card.read_text()
    assert f"SHA-256: `{file_sha256(weights)}`" in text
    gain = results["rows"]["fractal/lora/breast"]["acc"] - results["rows"]["random-init/lora/breast"]["acc"]
    assert f"breast {gain * 100:+.1f}" in text and ("NOT met" in text) == (gain * 100 < 5)
    assert "Train longer." in text and "| fractal | supervised on fractal | 1 x 4 | 4 |" in text
    # A candidate kept as its report file (the run folder gone) gives the same row; a missing one is named.
    kept = tmp_path / "fractal.json"
    kept.write_bytes((run / "pretrain.json").read_bytes())
    _, again = ship_base(run, tmp_path / "eval", "fractal", tmp_path / "pkg" / "base", {"fractal": kept})
    assert "| fractal | supervised on fractal | 1 x 4 | 4 |" in again.read_text()
    with pytest.raises(FileNotFoundError, match="no pretraining report"):
        ship_base(run, tmp_path / "eval", "fractal", tmp_path / "pkg" / "new", {"gone": tmp_path / "gone.json"})
    assert not (tmp_path / "pkg" / "new.safetensors").exists()
    with pytest.raises(ValueError, match="did not score this file"):
        ship_base(run, tmp_path / "eval", "random-init", tmp_path / "pkg" / "other", {})
    assert not (tmp_path / "pkg" / "other.safetensors").exists()
