#!/usr/bin/env python3
"""Drop the page cache before a timed run, so the run reads its dataset from storage (closed rules).

    python3 launchers/dropcache.py DATADIR [DATADIR ...] [--method auto|sysctl|sudo|fadvise]

run.sub runs this once per node, on the host (outside any container), with the host's python3: only the
standard library is used. Methods, in the order `auto` tries them:

  sysctl   sync, then write 3 to /proc/sys/vm/drop_caches: the whole cache, as NVIDIA's
           `sudo /sbin/sysctl vm.drop_caches=3`. Needs root and a writable /proc/sys (not in most containers).
  sudo     `sudo -n /sbin/sysctl vm.drop_caches=3`: clusters often allow exactly this command to users.
  fadvise  posix_fadvise(POSIX_FADV_DONTNEED) on every file under DATADIR (mlperf-common's `dropcache`):
           needs no privilege and evicts the dataset's clean pages, which is what the rule is about.

Prints one line naming the method used; exits 1 only if nothing worked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

DROP_CACHES = "/proc/sys/vm/drop_caches"


def drop_with_sysctl() -> bool:
    os.sync()  # dirty pages are not dropped: write them back first
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def drop_with_sudo() -> bool:
    sysctl = shutil.which("sysctl") or "/sbin/sysctl"
    if not shutil.which("sudo"):
        return False
    os.sync()
    # -n: never prompt for a password; a job has no terminal and would hang.
    r = subprocess.run(["sudo", "-n", sysctl, "-q", "vm.drop_caches=3"], capture_output=True)
    return r.returncode == 0


def drop_with_fadvise(roots: list[str]) -> tuple[int, int]:
    """Returns (files advised, bytes covered). Unreadable files are skipped, not fatal: the run will
    report a missing file far more clearly than this helper could."""
    os.sync()
    files = covered = 0
    for root in roots:
        paths = [root] if os.path.isfile(root) else (
            os.path.join(d, name) for d, _, names in os.walk(root) for name in names)
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # length 0: to the end of the file
                files += 1
                covered += os.fstat(fd).st_size
            except OSError:
                pass
            finally:
                os.close(fd)
    return files, covered


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datadir", nargs="+", help="dataset directories (or files) the next run reads")
    p.add_argument("--method", choices=("auto", "sysctl", "sudo", "fadvise"), default="auto")
    args = p.parse_args(argv)
    host = os.uname().nodename

    for name, drop in (("sysctl", drop_with_sysctl), ("sudo", drop_with_sudo)):
        if args.method in ("auto", name):
            if drop():
                print(f"dropcache {host}: {name}: vm.drop_caches=3 (whole page cache)", flush=True)
                return 0
            if args.method == name:
                print(f"dropcache {host}: {name}: not permitted", file=sys.stderr)
                return 1

    missing = [d for d in args.datadir if not os.path.exists(d)]
    if missing:
        print(f"dropcache {host}: fadvise: no such path: {', '.join(missing)}", file=sys.stderr)
        return 1
    files, covered = drop_with_fadvise(args.datadir)
    print(f"dropcache {host}: fadvise: POSIX_FADV_DONTNEED on {files} files ({covered / 2**20:.1f} MiB) "
          f"under {', '.join(args.datadir)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
