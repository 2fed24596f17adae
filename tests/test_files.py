"""Atomic writes: a failed write leaves the old file or folder as it was and nothing temporary behind; a
folder being replaced is never missing (or, where the system cannot swap two folders, parked beside it)."""

import json
import os
import shutil

import pytest
import torch

from fl_medlego import files
from fl_medlego.compare.cache import SpecialistCache
from fl_medlego.files import atomic_path, backup_path, replace_dir, write_json_atomic, write_text_atomic


class Boom(RuntimeError):
    pass


def _can_swap(where) -> bool:
    a, b = where / ".probe-a", where / ".probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return files._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


@pytest.fixture(params=["swap", "rename"])
def swap_mode(request, monkeypatch, tmp_path):
    """Run a test with the one-step swap (Linux) and with the two-rename fallback of other systems."""
    if request.param == "rename":
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    elif not _can_swap(tmp_path):
        pytest.skip("this system cannot swap two folders in one step")
    return request.param


def test_a_file_is_replaced_and_nothing_is_left_beside_it(tmp_path):
    path = tmp_path / "notes.txt"
    write_text_atomic(path, "old")
    write_json_atomic(path, {"new": [1, 2]})
    assert json.loads(path.read_text()) == {"new": [1, 2]}
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_failing_file_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_text_atomic(path, "old")
    with pytest.raises(Boom), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise Boom
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_value_json_cannot_hold_leaves_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"rows": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"rows": object()})
    assert json.loads(path.read_text()) == {"rows": 1} and os.listdir(tmp_path) == ["results.json"]


def test_a_body_that_writes_nothing_is_an_error_and_changes_nothing(tmp_path):
    path = tmp_path / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(path):
        pass
    assert os.listdir(tmp_path) == []


def test_the_temporary_keeps_the_suffix_so_that_format_by_suffix_writers_work(tmp_path):
    with atomic_path(tmp_path / "scaling.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name != "scaling.png"
        tmp.write_bytes(b"png")
    assert (tmp_path / "scaling.png").read_bytes() == b"png"


def _folder(path, **contents):
    path.mkdir()
    for name, text in contents.items():
        (path / name).write_text(text)


def test_a_folder_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path, swap_mode):
    final = tmp_path / "entry"
    _folder(final, old="1", shared="old")
    with atomic_path(final) as tmp:
        _folder(tmp, new="2", shared="new")
    assert sorted(os.listdir(final)) == ["new", "shared"] and (final / "shared").read_text() == "new"
    assert os.listdir(tmp_path) == ["entry"]


def test_a_failing_folder_write_leaves_the_old_folder_and_no_temporary(tmp_path, swap_mode):
    final = tmp_path / "entry"
    _folder(final, metrics="old")
    with pytest.raises(Boom), atomic_path(final) as tmp:
        _folder(tmp, metrics="new")
        raise Boom
    assert os.listdir(final) == ["metrics"] and (final / "metrics").read_text() == "old"
    assert os.listdir(tmp_path) == ["entry"]


def test_a_failing_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    final, new = tmp_path / "entry", tmp_path / "new"
    _folder(final, metrics="old")
    _folder(new, metrics="new")
    rename = os.rename

    def failing_install(src, dst):
        if str(src) == str(new):
            raise OSError("disk gone")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_install)
    with pytest.raises(OSError, match="disk gone"):
        replace_dir(new, final)
    assert (final / "metrics").read_text() == "old" and not backup_path(final).exists()


def _watch(monkeypatch, check):
    """Run `check` after every rename, replace and removal the writers make; returns the list of checks."""
    seen = []
    for module, name in ((os, "rename"), (os, "replace"), (os, "unlink"), (shutil, "rmtree")):
        original = getattr(module, name)

        def watched(*args, _original=original, _name=name, **kwargs):
            result = _original(*args, **kwargs)
            seen.append(_name)
            check(_name)
            return result

        monkeypatch.setattr(module, name, watched)
    return seen


def test_a_replaced_folder_is_never_missing_where_the_system_can_swap(tmp_path, monkeypatch):
    if not _can_swap(tmp_path):
        pytest.skip("this system cannot swap two folders in one step")
    final = tmp_path / "round-001"
    _folder(final, state="old")

    def check(_):
        assert (final / "state").read_text() in ("old", "new")

    seen = _watch(monkeypatch, check)
    with atomic_path(final) as tmp:
        _folder(tmp, state="new")
    assert (final / "state").read_text() == "new" and seen  # the old folder was removed, after the swap


def _cache_entry(root, value: float, extra=None):
    entry = root / "seed-0" / "blood" / "adapter"
    SpecialistCache.write(entry, {"head": {"w": torch.full((2,), value)}}, {"test": {"acc": value}}, extra)
    return entry


def test_the_compare_cache_keeps_an_entry_until_its_replacement_is_in_place(tmp_path, monkeypatch, swap_mode):
    entry = _cache_entry(tmp_path, 0.5)

    def check(_):  # a reader (or a crash) at any moment finds the old entry or the new one, whole
        whole = [p for p in (entry, backup_path(entry)) if SpecialistCache.complete(p)]
        assert whole, f"no complete entry at {entry} nor beside it"
        if swap_mode == "swap":
            assert SpecialistCache.complete(entry)

    seen = _watch(monkeypatch, check)
    _cache_entry(tmp_path, 0.75)
    assert seen  # the check ran
    monkeypatch.undo()
    assert SpecialistCache.metrics(entry) == {"test": {"acc": 0.75}}
    assert torch.equal(SpecialistCache.read(entry, "head")["w"], torch.full((2,), 0.75))
    assert os.listdir(entry.parent) == ["adapter"]


def test_a_failing_cache_write_leaves_the_old_entry(tmp_path, swap_mode):
    entry = _cache_entry(tmp_path, 0.5)

    def failing_save(folder):
        (folder / "adapter").mkdir()
        raise Boom

    with pytest.raises(Boom):
        _cache_entry(tmp_path, 0.75, extra=failing_save)
    assert SpecialistCache.metrics(entry) == {"test": {"acc": 0.5}}
    assert sorted(os.listdir(entry)) == ["head.safetensors", "metrics.json"]
    assert os.listdir(entry.parent) == ["adapter"]


def test_a_private_file_is_owner_only_complete_and_never_replaced(tmp_path):
    import stat

    from fl_medlego.files import create_private_file

    key = create_private_file(tmp_path / "site_key", b"secret")
    assert key.read_bytes() == b"secret" and stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_private_file(key, b"other")
    assert key.read_bytes() == b"secret" and sorted(p.name for p in tmp_path.iterdir()) == ["site_key"]


def test_keys_and_certificates_are_written_whole(tmp_path):
    import stat

    from fl_medlego.security import make_site_keys, make_tls

    paths = make_tls(tmp_path / "tls", ["127.0.0.1"])
    private, public = make_site_keys(tmp_path / "keys", "blood")
    assert stat.S_IMODE(paths["ca.key"].stat().st_mode) == 0o600 and stat.S_IMODE(private.stat().st_mode) == 0o600
    assert paths["ca.crt"].read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert public.read_text().endswith(" blood\n")
    leftovers = [p.name for p in (tmp_path / "tls").iterdir()] + [p.name for p in (tmp_path / "keys").iterdir()]
    assert not [name for name in leftovers if name.endswith(".tmp")]
    with pytest.raises(FileExistsError):
        make_site_keys(tmp_path / "keys", "blood")
