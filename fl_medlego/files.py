"""Files written atomically and tensors read with errors that name the file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing or corrupt file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError / ValueError
        raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
                         "it may be truncated or corrupt: write it again") from err


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file so that a crash leaves the old file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename: a power loss leaves the old file, not an empty one
    os.replace(tmp, path)
    return path


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place (the old one, if any, goes first)."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
