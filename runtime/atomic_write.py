"""Atomic, durable file and directory writes: the one way this project replaces a file.

A writer writes into a temporary name beside the target; on success the temporary is fsynced, renamed over
the target and the directory fsynced (so the rename itself survives a crash); on error it is removed. A
reader therefore sees the old file or the whole new one, never a torn one, and a job killed mid-write leaves
the previous version in place.

Temporary names are unique per writer (process id plus random bytes), so ranks or processes writing the
same target at once (a shared index cache, a verification marker) never write into each other's file; the
last rename wins, and each rename installs a complete file. Files are created with mode 0666 less the
umask, as `open` does, so shared datasets stay readable by the group.

    with atomic_path(target) as tmp:            # writers that take a path: torch.save, np.memmap, a library
        torch.save(tensor, tmp)
    with atomic_open(target, "w") as f:         # streaming writers: nothing is held in memory
        json.dump(obj, f)
    write = AtomicPath(target)                  # writers with an open/close life of their own
    ... write.tmp ... ; write.commit()  (or write.discard())
    with atomic_dir(part_dir) as tmp_dir:       # a directory of files that only makes sense whole
        ...
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from typing import IO, Iterator

_NAME_KEEP = 180  # characters of the target's name kept in the temporary's, well under NAME_MAX (255)


def _temporary_name(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name[:_NAME_KEEP]}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_path(path: str) -> None:
    """Make a file's data, or a directory's entries (a rename, a new file), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync_path  # what callers mean when it is a directory


class AtomicPath:
    """A fresh, empty temporary file beside `path` (`self.tmp`); `commit()` fsyncs it and renames it over
    `path`, `discard()` removes it. The target's directory is created if missing."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            self.tmp = _temporary_name(self.path)
            try:
                os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:  # 32 random bits collided: draw again
                continue

    def commit(self) -> None:
        try:
            fsync_path(self.tmp)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        fsync_dir(os.path.dirname(self.path))

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path` to write by name; on success it replaces `path` durably, on
    error it is removed and `path` keeps its old contents."""
    write = AtomicPath(path)
    try:
        yield write.tmp
    except BaseException:
        write.discard()
        raise
    write.commit()


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """`open(path, mode)` that lands atomically: the file object writes the temporary (streamed, never held
    in memory), which replaces `path` when the block ends without an error."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open({path!r}): mode {mode!r} is not a write mode ('w', 'wb', 'w+b', ...)")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a fresh temporary directory beside `path`; on success every file in it is fsynced and it
    replaces `path` (an old `path` is removed first: two directories cannot be swapped atomically, so a
    crash at that instant leaves no `path`, never a partial one). On error the temporary is removed."""
    path = os.path.abspath(path.rstrip(os.sep))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        tmp = _temporary_name(path)
        try:
            os.mkdir(tmp, 0o777)
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                fsync_path(os.path.join(root, name))
            fsync_dir(root)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(os.path.dirname(path))
