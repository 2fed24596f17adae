"""train.device / train.precision: what `auto` picks, the errors for a GPU that is not there, and the CPU path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_medlego.config import parse_run_config
from fl_medlego.device import placed, resolve_device, resolve_precision, to_device
from fl_medlego.pretrain.fractals import fractal_dataset, render, sample_categories


def test_auto_picks_the_gpu_only_when_torch_sees_one():
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("auto", cuda_available=True) == torch.device("cuda")
    assert resolve_device("cuda:1", cuda_available=True) == torch.device("cuda", 1)
    assert resolve_device("cpu", cuda_available=True) == torch.device("cpu")


def test_a_missing_gpu_or_an_unknown_device_is_named_with_the_fix():
    with pytest.raises(ValueError, match="no CUDA GPU.*train.device='auto' or 'cpu'"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(ValueError, match="train.device must be one of"):
        parse_run_config({"train.device": "gpu"})
    with pytest.raises(ValueError, match="train.precision must be one of"):
        parse_run_config({"train.precision": "fp16"})


def test_precision_auto_is_bf16_on_a_capable_gpu_and_float32_elsewhere():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("auto", gpu, bf16_supported=True) == torch.bfloat16
    assert resolve_precision("auto", gpu, bf16_supported=False) == torch.float32
    assert resolve_precision("float32", gpu, bf16_supported=True) == torch.float32
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_precision("bf16", cpu)
    with pytest.raises(ValueError, match="does not support bfloat16"):
        resolve_precision("bf16", gpu, bf16_supported=False)


def test_the_defaults_train_on_the_cpu_of_a_machine_without_gpu():
    cfg = parse_run_config({})
    assert (cfg.train.device, cfg.train.precision) == ("auto", "auto")
    if not torch.cuda.is_available():
        where = resolve_device(cfg.train.device)
        assert where == torch.device("cpu") and resolve_precision(cfg.train.precision, where) == torch.float32


def test_placed_puts_the_model_back_and_batches_stay_on_the_cpu():
    model = torch.nn.Linear(3, 2)
    with placed(model, torch.device("cpu")) as inside:
        assert inside is model
    assert model.weight.device.type == "cpu"
    batch = torch.zeros(4, 28, 28, 3, dtype=torch.uint8)
    assert to_device(batch, torch.device("cpu")) is batch  # no copy where nothing moves


def test_explicit_cpu_float32_trains_as_auto_does_here(tmp_path):
    """The CPU path is the default: on a machine without GPU, 'auto' and 'cpu'/'float32' are the same run."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine 'auto' trains on the GPU")
    from fl_medlego.site import load_site_data

    tiny = {"sites": "blood", "data.max-train": 32, "data.max-eval": 16, "train.local-epochs": 1,
            "train.batch-size": 16, "lora.rank": 2}
    results = []
    for device, precision in (("auto", "auto"), ("cpu", "float32")):
        cfg = parse_run_config({**tiny, "train.device": device, "train.precision": precision})
        data = load_site_data(cfg, "blood")
        result = cfg.kind_site().train(data, None, None)
        results.append({k: v.detach().clone() for k, v in result.update.to_tensors().items()})
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_the_torch_fractal_renderer_draws_the_numpy_renderers_images():
    """Same seed, same draws: the torch renderer (the GPU path, run here on the CPU) gives numpy's images,
    up to one grey level where colour sums are added in another order."""
    categories = sample_categories(6, np.random.default_rng(0), size=16)
    labels = np.arange(6).repeat(3)
    plain = render(categories, labels, np.random.default_rng(1), size=16, n_points=300)
    torch_cpu = render(categories, labels, np.random.default_rng(1), size=16, n_points=300, device="cpu")
    assert plain.shape == torch_cpu.shape == (18, 16, 16, 3) and torch_cpu.dtype == np.uint8
    difference = np.abs(plain.astype(int) - torch_cpu.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999
    other = render(categories, labels, np.random.default_rng(2), size=16, n_points=300, device="cpu")
    assert (other != torch_cpu).any()  # a real render, not a copy of its input


def test_a_fractal_set_has_the_same_categories_and_labels_on_any_renderer():
    images, labels = fractal_dataset(8, 4, seed=3, size=16, batch=16, colour_schemes=2)
    on_torch, torch_labels = fractal_dataset(8, 4, seed=3, size=16, batch=16, colour_schemes=2, device="cpu")
    assert np.array_equal(labels, torch_labels)
    assert np.abs(images.astype(int) - on_torch.astype(int)).max() <= 1


def test_the_gpu_session_scripts_run_on_the_cpu_without_flower_or_medmnist(tmp_path):
    """The prepared GPU command (benchmarks.throughput, benchmarks.pretrain_gpu) smoke-tested at tiny size, in
    a fresh process that must never import what the GPU machine lacks."""
    import json
    import subprocess
    import sys

    script = f"""
import json, sys
from benchmarks.throughput import main as throughput
from benchmarks.pretrain_gpu import main as pretrain
throughput(['--devices', 'cpu', '--skip-vit-b', '--cpu-images', '64', '--output', r'{tmp_path}/throughput.csv'])
pretrain(['--output', r'{tmp_path}/pre', '--device', 'cpu', '--images', '1000', '--budget-s', '4', '--max-steps', '4',
          '--probe-steps', '2', '--batch-size', '16'])
print(json.dumps({{m: m in sys.modules for m in ('flwr', 'medmnist', 'opacus')}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"flwr": False, "medmnist": False, "opacus": False}
    report = json.loads((tmp_path / "pre" / "pretrain_gpu.json").read_text())
    assert report["steps"] >= 2 and report["device"] == "cpu"
    assert (tmp_path / "pre" / "run" / "backbone.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "pre").iterdir()) == ["pretrain_gpu.json", "run"]  # probe cleaned up
    assert (tmp_path / "throughput.csv").read_text().count("\n") == 2  # header + the default preset on the CPU
