"""Where a site's model runs and in which precision: `train.device` and `train.precision`.

`auto` is decided on the machine that trains, never in the run config: a coordinator without a GPU can
send the same settings to sites with and without one. On a CPU `auto` means float32 on the CPU, so
nothing changes where there is no GPU; with CUDA it means the GPU (in a Ray simulation, the share of
it Ray gives the site's actor) and bf16 autocast where the GPU supports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("auto", "float32", "bf16")


def check_device_name(name: str) -> None:
    """A clear error for a name torch would not understand (checked when the run config is read)."""
    if name in ("auto", "cpu", "cuda"):
        return
    if name.startswith("cuda:") and name[5:].isdigit():
        return
    raise ValueError(f"train.device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")


def check_precision_name(name: str) -> None:
    if name not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


def resolve_device(name: str, cuda_available: bool | None = None,
                   fix: str = "use train.device='auto' or 'cpu'") -> torch.device:
    """`auto` = the first GPU torch sees, else the CPU; a GPU that is asked for and absent is an error
    (`fix` says what to set instead, in the caller's terms)."""
    check_device_name(name)
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not available:
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU here (a CUDA build of torch and "
                         f"a visible device are needed); {fix}")
    return device


def resolve_precision(name: str, device: torch.device, bf16_supported: bool | None = None) -> torch.dtype:
    """float32, or bfloat16 for autocast: `auto` picks bf16 on a GPU that supports it, float32 elsewhere.

    bf16 on the CPU is refused rather than emulated: it is slower there and changes the numbers."""
    check_precision_name(name)
    if device.type != "cuda":
        if name == "bf16":
            raise ValueError("train.precision='bf16' needs a GPU; on the CPU use 'float32' or 'auto'")
        return torch.float32
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if name == "bf16" and not bf16_supported:
        raise ValueError(f"train.precision='bf16' but {device} does not support bfloat16; use 'auto' or 'float32'")
    return torch.bfloat16 if name == "bf16" or (name == "auto" and bf16_supported) else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (weights and optimizer state stay float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of a split (uint8 images or labels, on the CPU) on `device`. For a GPU the batch is pinned
    first so that the copy is asynchronous (as a DataLoader with pin_memory does); the uint8 images travel
    and become floats on the GPU, a quarter of the bytes of float32."""
    if batch.device == device:
        return batch
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


@contextlib.contextmanager
def placed(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Run `model` on `device`, and put it back where it was afterwards (updates leave a site from the CPU)."""
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)
