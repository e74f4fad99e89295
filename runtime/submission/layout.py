"""The MLCommons submission tree (shared/spec/logging_and_compliance.md §7), written from checked runs:

    <org>/results/<system>/<benchmark>/result_<i>.txt     the runs' mlperf_log.txt, byte for byte, oldest first
    <org>/systems/<system>.json
    <org>/benchmarks/<benchmark>/implementations/<impl>/  the code at the runs' git revision + README.md
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import tarfile

from runtime.submission.runs import Run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_SOURCE_BYTES = 50 * 2**20  # the package checker's limit per source file


def write_results(org_dir: str, system: str, benchmark: str, runs: list[Run]) -> list[str]:
    folder = os.path.join(org_dir, "results", system, benchmark)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, run in enumerate(runs):
        path = os.path.join(folder, f"result_{i}.txt")
        shutil.copyfile(run.log_path, path)
        paths.append(path)
    return paths


def write_system(org_dir: str, system: str, desc: dict) -> str:
    folder = os.path.join(org_dir, "systems")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{system}.json")
    with open(path, "w") as f:
        json.dump(desc, f, indent=2)
        f.write("\n")
    return path


def _commit_of(revision: str) -> str | None:
    """The commit a run's recorded revision names, if this repository has it ("-dirty": the commit below)."""
    commit = revision.removesuffix("-dirty")
    if not commit or commit == "unknown":
        return None
    r = subprocess.run(["git", "-C", REPO, "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return commit if r.returncode == 0 else None


def _extract_archive(commit: str, dest: str) -> list[str]:
    """`git archive` of the commit into dest; the names skipped under the checker's source rules."""
    blob = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", commit], capture_output=True,
                          check=True).stdout
    skipped = []
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/")
            # the package checker refuses names with spaces or a leading dot, and files over 50 MB
            if any(p.startswith(".") or " " in p for p in parts) or m.size > MAX_SOURCE_BYTES:
                skipped.append(m.name)
            elif m.isfile() or m.isdir():
                members.append(m)
        tar.extractall(dest, members=members, filter="data")
    return skipped


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _override_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def recorded_overrides(run: Run) -> list[str] | None:
    """The dotted overrides that turn the flavour into the run's resolved config (the seed aside), or None when
    the flavour cannot be built here to compare."""
    import dataclasses

    from runtime.benchmark import load_spec

    try:
        default = dataclasses.asdict(load_spec(run.benchmark).config(run.flavour))
    except Exception:  # noqa: BLE001 - any failure to build the flavour only means no comparison
        return None
    base = json.loads(json.dumps(default, default=str))  # the snapshot's own encoding
    got = _flatten(run.snapshot.get("config", {}))
    return [f"{k}={_override_text(v)}" for k, v in sorted(got.items())
            if k != "run.seed" and k in _flatten(base) and _flatten(base)[k] != v]


def run_command(run: Run) -> str:
    overrides = recorded_overrides(run)
    extra = " ".join(shlex.quote(o) for o in overrides or [])
    return (f"python -m runtime.train {run.benchmark} --flavour {shlex.quote(run.flavour)} --data-dir $DATADIR "
            f"--run-dir $LOGDIR/<run>{' ' + extra if extra else ''}"
            + ("" if overrides is not None else "   # overrides unknown: the flavour could not be built here"))


def write_implementation(org_dir: str, benchmark: str, impl: str, runs: list[Run], system: str) -> tuple[str, str]:
    """(the implementation folder, a one-line note on the code it holds)."""
    folder = os.path.join(org_dir, "benchmarks", benchmark, "implementations", impl)
    os.makedirs(folder, exist_ok=True)
    run = runs[0]
    commit = _commit_of(run.git_revision)
    if commit:
        skipped = _extract_archive(commit, folder)
        note = f"code of git commit {commit} (git archive)"
        if run.git_revision.endswith("-dirty"):
            note += "; the runs' tree had uncommitted changes, which are not in it"
        if skipped:
            note += f"; {len(skipped)} entries left out (dot names, spaces or > 50 MB)"
    else:
        note = f"code NOT included: git revision {run.git_revision!r} is not in {REPO}; add it by hand"
    flavour_cfg = run.snapshot.get("config", {})
    overrides = recorded_overrides(run)
    extra_args = f" EXTRA_ARGS={shlex.quote(' '.join(overrides))}" if overrides else ""
    readme = [
        f"# {benchmark}: {impl}",
        "",
        f"{note}.",
        "",
        f"Flavour `{run.flavour}` ({len(runs)} runs, seeds {', '.join(str(r.seed) for r in runs)}), "
        f"system `{system}`, layout `{run.snapshot.get('layout', '?')}`, device `{run.snapshot.get('device', '?')}`.",
        "",
        "## Running",
        "",
        "```bash",
        "# Slurm, NEXP runs in one allocation (launchers/run.sub), after sourcing the flavour's config file:",
        f"CONT=<image> DATADIR=<dataset> LOGDIR=$PWD/results NEXP={len(runs)}{extra_args} sbatch -N $DGXNNODES "
        f"-t $WALLTIME launchers/{benchmark}.sub",
        "# one run by hand:",
        run_command(run),
        "```",
        "",
        "## Resolved configuration of the first run",
        "",
        "```json",
        json.dumps(flavour_cfg, indent=2, default=str),
        "```",
        "",
        "Package versions: " + ", ".join(f"{k} {v}" for k, v in sorted(run.snapshot.get("packages", {}).items())),
        "",
    ]
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(readme))
    return folder, note
