"""Files and folders written atomically, and tensors read with errors that name the file.

Every writer goes through `atomic_path`: the body writes a temporary sibling (a file or a whole folder),
which is flushed to disk and moved into place only if the body succeeds. A crash or an error leaves the
old version or the new one, never half of one, and no temporary behind (a killed process may leave a
hidden `.NAME.*.tmp` sibling, which nothing reads).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` for the body to write (a file or a folder); on success it is
    synced to disk and moved into place (a folder with `replace_dir`), on failure it is removed.

    The temporary keeps `path`'s suffix, so writers that pick a format by suffix (savefig) still work.
    The parent folder must exist.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(f"nothing was written for {path}: the body must create {tmp.name}")
        _sync_tree(tmp)
        if tmp.is_dir() and not tmp.is_symlink():
            replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
            _sync_folder(path.parent)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file so that a crash leaves the old file or the new one, never half of it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_tensor_folder(final: str | Path, tensors: dict[str, dict[str, torch.Tensor]],
                        also: Callable[[Path], object] | None = None) -> Path:
    """The folder `final` with one safetensors file per entry of `tensors` (NAME.safetensors) and whatever
    `also(folder)` writes into it, complete or not at all: the old folder stays until the new one is in place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        for name, values in tensors.items():
            save_file({k: v.contiguous() for k, v in values.items()}, str(tmp / f"{name}.safetensors"))
        if also is not None:
            also(tmp)
    return final


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write a binary file so that a crash leaves the old file or the new one, never half of it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def create_private_file(path: str | Path, data: bytes) -> Path:
    """A new file readable by its owner only (0600 from its first byte), complete or absent; an existing file
    is never replaced (FileExistsError): a private key is moved away by hand to rotate it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # a link, not a rename: it fails instead of replacing a file that exists
        _sync_folder(path.parent)
    finally:
        _remove(tmp)
    return path


def write_json_atomic(path: str | Path, data: object, *, indent: int | None = 2,
                      default: Callable[[object], object] | None = None, sort_keys: bool = False) -> Path:
    """`data` as JSON (json.dumps's indent / default / sort_keys), written with `write_text_atomic`."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=default, sort_keys=sort_keys))


def backup_path(final: str | Path) -> Path:
    """Where `replace_dir` parks the old folder on systems that cannot swap two folders in one step."""
    final = Path(final)
    return final.with_name(final.name + ".old")


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Move the fully written folder `tmp` to `final`, replacing the folder there, if any.

    Where the system can (Linux, renameat2), the two are swapped in one step, so that `final` always
    holds the old folder or the new one; the old one is removed afterwards. Elsewhere the old folder is
    first renamed to `backup_path(final)` and removed only once the new one is in place: a crash between
    the two renames leaves both folders, and a caller can finish the swap (see `assembly.edit_generalist`).
    """
    tmp, final = Path(tmp), Path(final)
    if not os.path.lexists(final):
        os.rename(tmp, final)
        _remove(backup_path(final))  # an old folder parked by a swap cut short: the new one is in place now
    elif _exchange(tmp, final):
        _remove(tmp)  # now the old folder
    else:
        backup = backup_path(final)
        _remove(backup)  # a leftover of an earlier swap; `final` exists, so it is not the only copy
        os.rename(final, backup)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(backup, final)
            raise
        _remove(backup)
    _sync_folder(final.parent)


def link_or_copy(source: str | Path, destination: str | Path) -> None:
    """Recreate the file or folder `source` at `destination`, hard-linking files where the file system
    allows (no time, no space) and copying them elsewhere; links stay links."""
    source, destination = Path(source), Path(destination)
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy_file)
    else:
        _link_or_copy_file(source, destination)


def _link_or_copy_file(source: str | Path, destination: str | Path) -> None:
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, destination, follow_symlinks=False)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_CANNOT_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the system or the file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _CANNOT_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _sync_tree(path: Path) -> None:
    """Flush a file, or every file and folder under a folder, to disk before it is renamed into place:
    after a power loss the rename must not point at data that never reached the disk."""
    if path.is_symlink():
        return
    if path.is_dir():
        for folder, _, files in os.walk(path):
            for name in files:
                if not os.path.islink(os.path.join(folder, name)):
                    _fsync(os.path.join(folder, name), os.O_RDONLY)
            _sync_folder(Path(folder))
    else:
        _fsync(path, os.O_RDONLY)


def _sync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (not possible, nor needed, on every system)."""
    try:
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        pass


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a file, link or folder if present; never raises (it runs while another error propagates)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()
    except OSError:
        pass
