"""containers/Dockerfile installs exactly pyproject.toml's [project] dependencies: the image and the
venv must not drift apart, so changing one without the other fails here."""

from __future__ import annotations

import re
import shlex
import tomllib

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


def test_dockerfile_installs_exactly_the_pyproject_pins():
    image, project = dockerfile_pins(DOCKERFILE.read_text()), pyproject_pins()
    assert project, "pyproject.toml lists no dependencies"
    missing = {k: v for k, v in project.items() if image.get(k) != v}
    extra = {k: v for k, v in image.items() if project.get(k) != v}
    assert not missing and not extra, (
        f"containers/Dockerfile and pyproject.toml disagree.\n  pinned in pyproject, not so in the image: "
        f"{missing}\n  pinned in the image, not so in pyproject: {extra}")


def test_dockerfile_has_every_pip_install_pinned():
    # An unpinned `pip install foo` in the image would float, whatever pyproject says.
    for instruction in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction.upper().startswith("RUN ") and "-r /tmp/nodeps.txt" in instruction:
            continue  # the --no-deps list: checked line by line below
        if instruction.upper().startswith("RUN ") and "pip install" in instruction:
            packages = [t for t in shlex.split(instruction[4:])
                        if not t.startswith("-") and t not in ("python", "python3", "pip", "install")]
            unpinned = [p for p in packages if not PIN.match(p)]
            assert not unpinned, f"unpinned packages in `{instruction[:60]}...`: {unpinned}"


def test_dockerfile_uses_an_ngc_pytorch_base_and_the_repo_workdir():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base[1]), base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    # run.sub runs /workspace/mlperf/launchers/run_and_time.sh in the container (CONT_REPO).
    assert re.search(r"^WORKDIR /workspace/mlperf$", text, re.M)
    assert re.search(r"^COPY \. /workspace/mlperf$", text, re.M)
    assert 'CONT_REPO="${CONT_REPO:-/workspace/mlperf}"' in (REPO / "launchers" / "run.sub").read_text()


def test_the_parser_sees_a_changed_pin():
    # Guard against a parser that silently finds nothing: a pin edited in the text must show up.
    text = DOCKERFILE.read_text()
    edited = dockerfile_pins(text.replace('"numpy==', '"numpy==0.0.0.dev0+', 1))
    assert edited["numpy"].startswith("0.0.0.dev0+")
    assert len(edited) == len(dockerfile_pins(text)) == len(pyproject_pins())


def test_the_no_deps_list_is_pinned_and_installed_by_the_image():
    lines = [line.strip() for line in (REPO / "requirements-nodeps.txt").read_text().splitlines()]
    packages = [line for line in lines if line and not line.startswith("#")]
    assert packages and all(PIN.match(p) for p in packages), packages
    assert "torchrec" in {normalize(PIN.match(p)[1]) for p in packages}
    text = DOCKERFILE.read_text()
    assert "COPY requirements-nodeps.txt" in text and "pip install --no-deps -r /tmp/nodeps.txt" in text
