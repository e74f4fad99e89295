"""runtime/atomic_write.py: a write replaces its target whole or not at all, durably, with a temporary of its own."""

import os
import stat

import pytest

from runtime import atomic_write
from runtime.atomic_write import AtomicPath, atomic_dir, atomic_open, atomic_path, write_text_atomic


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "index.txt"
    target.write_text("old\n")
    with atomic_open(str(target), "w") as f:
        f.write("new\n")
        assert target.read_text() == "old\n"  # nothing visible until the block ends
    assert target.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["index.txt"]


def test_path_writers_and_missing_directories(tmp_path):
    target = tmp_path / "deep" / "er" / "shard.bin"
    with atomic_path(str(target)) as tmp:
        assert os.path.dirname(tmp) == str(target.parent) and os.path.exists(tmp) and os.path.getsize(tmp) == 0
        with open(tmp, "wb") as f:
            f.write(b"\x00\x01\x02")
    assert target.read_bytes() == b"\x00\x01\x02"
    assert os.listdir(target.parent) == ["shard.bin"]


@pytest.mark.parametrize("how", ["open", "path"])
def test_an_exception_keeps_the_old_file_and_removes_the_temporary(tmp_path, how):
    target = tmp_path / "part.npy"
    target.write_bytes(b"complete old file")
    with pytest.raises(RuntimeError, match="disk full"):
        if how == "open":
            with atomic_open(str(target)) as f:
                f.write(b"half of the new")
                raise RuntimeError("disk full")
        else:
            with atomic_path(str(target)) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"half of the new")
                raise RuntimeError("disk full")
    assert target.read_bytes() == b"complete old file"
    assert os.listdir(tmp_path) == ["part.npy"]


def test_concurrent_writers_of_one_target_get_their_own_temporaries(tmp_path):
    target = str(tmp_path / "shared.idx")
    first, second = AtomicPath(target), AtomicPath(target)
    assert first.tmp != second.tmp
    assert os.path.dirname(first.tmp) == os.path.dirname(second.tmp) == str(tmp_path)
    with open(first.tmp, "w") as f:
        f.write("first\n")
    with open(second.tmp, "w") as f:
        f.write("second, longer\n")
    first.commit()
    assert open(target).read() == "first\n"  # the second writer's half-written file did not leak in
    second.commit()
    assert open(target).read() == "second, longer\n"
    assert os.listdir(tmp_path) == ["shared.idx"]


def test_temporaries_of_nested_contexts_differ(tmp_path):
    target = str(tmp_path / "x.json")
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b


def _record_fsyncs(monkeypatch):
    """Replace os.fsync with a recorder of (is a directory, the path the fd names)."""
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append((stat.S_ISDIR(os.fstat(fd).st_mode), os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(atomic_write.os, "fsync", fsync)
    return calls


def test_the_file_and_then_its_directory_are_fsynced(tmp_path, monkeypatch):
    calls = _record_fsyncs(monkeypatch)
    target = tmp_path / "run_state.json"
    write_text_atomic(str(target), "{}\n")
    assert len(calls) == 2
    (file_is_dir, file_path), (dir_is_dir, dir_path) = calls
    assert not file_is_dir and os.path.basename(file_path).startswith(".run_state.json.tmp-")
    assert dir_is_dir and dir_path == str(tmp_path)  # after the rename: the rename itself is durable


def test_nothing_is_fsynced_or_renamed_on_error(tmp_path, monkeypatch):
    calls = _record_fsyncs(monkeypatch)
    with pytest.raises(ValueError):
        with atomic_open(str(tmp_path / "a.bin")):
            raise ValueError("bad record")
    assert calls == [] and os.listdir(tmp_path) == []


def test_new_files_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(str(tmp_path / "shard.idx"), "0 16\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "shard.idx").st_mode) == 0o644


def test_atomic_open_refuses_a_read_mode(tmp_path):
    with pytest.raises(ValueError, match="not a write mode"):
        with atomic_open(str(tmp_path / "x"), "rb"):
            pass


def test_directory_replaced_whole_with_its_files_fsynced(tmp_path, monkeypatch):
    part = tmp_path / "part_00000"
    part.mkdir()
    (part / "stale.npy").write_bytes(b"from an older conversion")
    calls = _record_fsyncs(monkeypatch)
    with atomic_dir(str(part)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.listdir(tmp) == []
        with open(os.path.join(tmp, "input_ids.npy"), "wb") as f:
            f.write(b"tokens")
        assert (part / "stale.npy").exists()  # the old part stays readable while the new one is written
    assert os.listdir(part) == ["input_ids.npy"] and (part / "input_ids.npy").read_bytes() == b"tokens"
    assert os.listdir(tmp_path) == ["part_00000"]
    fsynced_files = [path for is_dir, path in calls if not is_dir]
    fsynced_dirs = [path for is_dir, path in calls if is_dir]
    assert [os.path.basename(p) for p in fsynced_files] == ["input_ids.npy"]
    assert fsynced_dirs[-1] == str(tmp_path)


def test_directory_kept_on_error(tmp_path):
    part = tmp_path / "part_00000"
    part.mkdir()
    (part / "input_ids.npy").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_dir(str(part)) as tmp:
            with open(os.path.join(tmp, "input_ids.npy"), "wb") as f:
                f.write(b"half")
            raise RuntimeError("bad record")
    assert (part / "input_ids.npy").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["part_00000"]
