"""The two dependency sets and the GPU image: pyproject.toml (+ requirements-nodeps.txt) is the CPU set;
containers/Dockerfile keeps the NGC base's torch, Transformer Engine, apex, DALI and triton and adds only
containers/requirements-gpu*.txt. Every package the code imports must be in both sets (the GPU one being the
base's list in containers/ngc_base.toml plus our GPU files), and containers/check_image.py must import it."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO

DOCKERFILE = REPO / "containers" / "Dockerfile"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: PyYAML == pyyaml, nvidia_dali == nvidia-dali


def dockerfile_instructions(text: str) -> list[str]:
    """Instructions with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    return logical


def dockerfile_pins(text: str) -> dict[str, str]:
    pins = {}
    for instruction in dockerfile_instructions(text):
        if not instruction.upper().startswith("RUN ") or "pip install" not in instruction:
            continue
        for token in shlex.split(instruction[4:]):
            m = PIN.match(token)
            if m:
                assert normalize(m[1]) not in pins, f"{m[1]} pinned twice in the Dockerfile"
                pins[normalize(m[1])] = m[2]
    return pins


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = PIN.match(dep.replace(" ", ""))
        assert m, f"pyproject dependency {dep!r} is not an exact pin (name==version)"
        pins[normalize(m[1])] = m[2]
    return pins


def test_dockerfile_uses_an_ngc_pytorch_base_and_the_repo_workdir():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base[1]), base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    # run.sub runs /workspace/mlperf/launchers/run_and_time.sh in the container (CONT_REPO).
    assert re.search(r"^WORKDIR /workspace/mlperf$", text, re.M)
    assert re.search(r"^COPY \. /workspace/mlperf$", text, re.M)
    assert 'CONT_REPO="${CONT_REPO:-/workspace/mlperf}"' in (REPO / "launchers" / "run.sub").read_text()


# --- the GPU set ------------------------------------------------------------------------------------------
CONTAINERS = REPO / "containers"
GPU_FILES = {"requirements-gpu.txt": "", "requirements-gpu-nodeps.txt": "--no-deps"}
# What the NGC base ships and the image must never install (a PyPI build would replace NVIDIA's).
BASE_ONLY = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton|transformer-engine.*|apex|"
                       r"nvidia-dali.*|nvidia-nccl.*|nvidia-cudnn.*)$")
# Top-level import name -> distribution, where they differ.
DIST_OF = {"PIL": "pillow", "yaml": "pyyaml", "nvidia": "nvidia-dali", "open_clip": "open-clip-torch",
           "megatron": "megatron-core", "transformer_engine": "transformer-engine", "fbgemm_gpu": "fbgemm-gpu"}
# GPU-only: the NGC base's, with a CPU path beside them (kernels/backends.py); not in the CPU set.
GPU_ONLY = {"transformer-engine", "apex"}
# Imported only inside a function, by optional paths that say what to install (checked lazy below).
OPTIONAL = {"numcodecs": "runtime/mcore/zarr_array.py: compressed zarr arrays only",
            "sentencepiece": "pipelines/megatron_data/prepare: the offline C4 tokenisation script",
            "fiftyone": "pipelines/openimages/prepare: the offline OpenImages download script"}
CODE_ROOTS = ("runtime", "kernels", "models", "pipelines")


def requirement_lines(path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def gpu_pins() -> dict[str, str]:
    pins = {}
    for name in GPU_FILES:
        for line in requirement_lines(CONTAINERS / name):
            m = PIN.match(line)
            assert m, f"containers/{name}: {line!r} is not an exact pin (name==version)"
            assert normalize(m[1]) not in pins, f"{m[1]} pinned twice in the GPU set"
            pins[normalize(m[1])] = m[2]
    return pins


def ngc_base() -> dict:
    return tomllib.loads((CONTAINERS / "ngc_base.toml").read_text())


def installs(text: str) -> list[tuple[str, list[str]]]:
    """(instruction, installed requirement tokens) of every `pip install` in a Dockerfile's text, `-r` files
    (COPY'd from containers/ to /opt/mlperf/) expanded to their lines."""
    found = []
    for instruction in dockerfile_instructions(text):
        if not instruction.upper().startswith("RUN ") or "pip install" not in instruction:
            continue
        tokens, packages, i = shlex.split(instruction[4:]), [], 0
        while i < len(tokens):
            token = tokens[i]
            if token in ("-r", "--requirement", "-c", "--constraint"):
                if token in ("-r", "--requirement"):
                    packages += requirement_lines(CONTAINERS / tokens[i + 1].rsplit("/", 1)[-1])
                i += 2
                continue
            if not token.startswith("-") and token not in ("python", "python3", "-m", "pip", "install", "&&"):
                packages.append(token)
            i += 1
        found.append((instruction, packages))
    return found


def forbidden_installs(text: str) -> list[str]:
    bad = []
    for instruction, packages in installs(text):
        for package in packages:
            name = normalize(re.split(r"[=<>!~\[ ]", package, maxsplit=1)[0])
            if BASE_ONLY.match(name):
                bad.append(f"{package} in `{instruction[:70]}`")
    return bad


def test_dockerfile_never_installs_what_the_base_ships():
    text = DOCKERFILE.read_text()
    assert forbidden_installs(text) == []
    unpinned = [p for _, packages in installs(text) for p in packages if not PIN.match(p)]
    assert not unpinned, f"unpinned installs in the image: {unpinned}"
    assert "PIP_CONSTRAINT=" not in text.replace(" ", ""), "the base's pip constraints must stay in force"
    assert "--force-reinstall" not in text and "--upgrade" not in text and " -U " not in text


def test_the_install_check_sees_a_forbidden_package():
    # Guard against a parser that silently finds nothing: a torch or TE install, inline or through a
    # requirements file, must be caught.
    text = DOCKERFILE.read_text()
    assert forbidden_installs(text + '\nRUN python -m pip install "torch==2.14.1"\n')
    assert forbidden_installs(text + "\nRUN pip install --no-deps transformer_engine[pytorch]==2.9.0\n")
    packages = [p for _, pkgs in installs(text) for p in pkgs]
    assert len(packages) == len(gpu_pins()), "every GPU-set line is installed, once"


def test_gpu_set_is_exact_pins_installed_the_safe_way():
    pins = gpu_pins()
    assert {"megatron-core", "torchrec", "fbgemm-gpu", "mlperf-logging"} <= set(pins)
    assert not [n for n in pins if BASE_ONLY.match(n)]
    runs = {i: pkgs for i, pkgs in installs(DOCKERFILE.read_text())}
    for name, flag in GPU_FILES.items():
        (instruction,) = [i for i in runs if f"/opt/mlperf/{name}" in i]
        assert f"COPY containers/{name}" in DOCKERFILE.read_text() or name in DOCKERFILE.read_text()
        if flag:
            assert flag in instruction, f"containers/{name} must be installed with {flag}"
        else:
            assert "-c /etc/pip/constraint.txt" in instruction, "resolve under the base's constraints"
    # torch-dependent packages must be in the --no-deps file (their metadata would pull a PyPI torch).
    nodeps = {normalize(PIN.match(ln)[1]) for ln in requirement_lines(CONTAINERS / "requirements-gpu-nodeps.txt")}
    assert {"megatron-core", "torchrec", "fbgemm-gpu", "open-clip-torch", "timm", "torchmetrics"} <= nodeps


def test_base_tag_and_its_facts_are_recorded():
    base = ngc_base()
    tag = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)[1]
    assert base["base"]["tag"] == tag, "containers/ngc_base.toml describes another base than the Dockerfile's"
    assert len(base["base"]["reasons"]) >= 2
    for part, fact in base["facts"].items():
        value = fact.get("version", fact.get("value"))
        assert value, f"facts.{part}: no version/value (write 'not found' when no source gave one)"
        if value != "not found":
            assert fact.get("source", "").startswith("https://") and fact.get("quote"), f"facts.{part}: no source"
        else:
            assert fact.get("source") or fact.get("note"), f"facts.{part}: say where it was looked for"
    for dist, where in base["provides"].items():
        assert where == "asserted at build" or where.removeprefix("facts.") in base["facts"], (dist, where)
    assert "check_image.py --base-record /opt/mlperf/base-packages.txt" in DOCKERFILE.read_text()


def imports_of(path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level) of every absolute import in a file."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        pytest.fail(f"{path.relative_to(REPO)} does not parse: {err}")
    found, top_level = [], {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(n.split(".")[0], id(node) in top_level) for n in names]
    return found


def imported_distributions() -> dict[str, list[str]]:
    """distribution -> files importing it, over the code (not tests), without the stdlib and our packages."""
    out: dict[str, list[str]] = {}
    lazy_only: dict[str, bool] = {}
    for root in CODE_ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            for module, module_level in imports_of(path):
                if module in sys.stdlib_module_names or module in CODE_ROOTS or module == "__future__":
                    continue
                if module in OPTIONAL:
                    lazy_only[module] = lazy_only.get(module, True) and not module_level
                    continue
                out.setdefault(normalize(DIST_OF.get(module, module)), []).append(str(path.relative_to(REPO)))
    for module, lazy in lazy_only.items():
        assert lazy, f"{module} ({OPTIONAL[module]}) is imported at module level somewhere: make it lazy or pin it"
    return out


def provided(dist: str, names) -> bool:
    return any(n == dist or n.startswith(dist + "-") for n in names)  # nvidia-dali-cuda130, fbgemm-gpu-cpu


def test_every_imported_package_is_in_both_sets():
    cpu = set(pyproject_pins()) | {normalize(PIN.match(ln)[1])
                                   for ln in requirement_lines(REPO / "requirements-nodeps.txt")}
    gpu = set(gpu_pins()) | {normalize(n) for n in ngc_base()["provides"]}
    used = imported_distributions()
    assert {"torch", "megatron-core", "transformer-engine", "nvidia-dali"} <= set(used), sorted(used)
    missing_cpu = {d: f[:2] for d, f in used.items() if d not in GPU_ONLY and not provided(d, cpu)}
    missing_gpu = {d: f[:2] for d, f in used.items() if not provided(d, gpu)}
    assert not missing_cpu, f"imported but not pinned in pyproject.toml / requirements-nodeps.txt: {missing_cpu}"
    assert not missing_gpu, f"imported but neither in ngc_base.toml [provides] nor containers/requirements-gpu*: " \
                            f"{missing_gpu}"


def test_check_image_imports_every_package_the_code_uses():
    sys.path.insert(0, str(CONTAINERS))
    try:
        import check_image
    finally:
        sys.path.remove(str(CONTAINERS))
    checked = {normalize(DIST_OF.get(m.split(".")[0], m.split(".")[0])) for m in check_image.THIRD_PARTY}
    missing = set(imported_distributions()) - checked - GPU_ONLY
    assert not missing, f"containers/check_image.py THIRD_PARTY lacks {sorted(missing)}"
    assert "models.gpt3.benchmark" in check_image.benchmark_modules()


def test_check_image_on_the_cpu_set(tmp_path):
    # Here: every import works, TE and apex are reported absent without a crash; --gpu makes them required
    # (exit 1), and a base record whose torch differs is reported as replaced.
    record = tmp_path / "base-packages.txt"
    record.write_text("torch==0.0.1+ngc\nnumpy==1.0.0\n")
    report_path = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(CONTAINERS / "check_image.py"), "--gpu", "--base-record", str(record),
                          "--json", str(report_path)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert all(v == "ok" for v in report["imports"].values()), {k: v for k, v in report["imports"].items() if v != "ok"}
    assert "does not import" in report["transformer_engine"]["status"]
    assert all("apex does not import" in v for v in report["apex"].values())
    failures = report["failures"]
    assert any(f.startswith("--gpu: Transformer Engine FP8 not usable") for f in failures)
    assert any(f.startswith("--gpu: apex lamb") for f in failures)
    assert any(f.startswith("base package replaced: torch (0.0.1+ngc in the base") for f in failures)
    assert not [f for f in failures if f.startswith("import ")]
    assert "FAILED:" in run.stdout


def test_the_cpu_no_deps_list_is_pinned_and_installed_by_setup_venv():
    packages = requirement_lines(REPO / "requirements-nodeps.txt")
    assert packages and all(PIN.match(p) for p in packages), packages
    assert "torchrec" in {normalize(PIN.match(p)[1]) for p in packages}
    assert "--no-deps -r \"$REPO/requirements-nodeps.txt\"" in (REPO / "launchers" / "setup_venv.sh").read_text()
