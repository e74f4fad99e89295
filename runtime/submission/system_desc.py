"""systems/<system>.json: what the runs and the machine tell, and the list of what only the submitter knows.

Sources in order: the `:::SYSJSON` line run.sub wrote on the training node (accelerator, CPU, nodes, OS), the
runs' run_config.json (world size, device, framework versions), then this machine for the host facts, said so in
the notes, since packaging may happen elsewhere. Every field the system-description checker requires is present;
the ones nobody could fill are left "" and listed for the submitter.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess

# system_desc_checker.py's required fields (training), in its order.
REQUIRED_FIELDS = (
    "submitter", "division", "status", "system_name", "number_of_nodes", "host_processors_per_node",
    "host_processor_model_name", "host_processor_core_count", "host_processor_vcpu_count", "host_processor_frequency",
    "host_processor_caches", "host_processor_interconnect", "host_memory_capacity", "host_storage_type",
    "host_storage_capacity", "host_networking", "host_networking_topology", "host_memory_configuration",
    "accelerators_per_node", "accelerator_model_name", "accelerator_host_interconnect", "accelerator_frequency",
    "accelerator_on-chip_memories", "accelerator_memory_configuration", "accelerator_memory_capacity",
    "accelerator_interconnect", "accelerator_interconnect_topology", "cooling", "hw_notes", "framework",
    "other_software_stack", "operating_system", "sw_notes")
# submission_status in a log -> the system json's status (the checker accepts only these four).
STATUS = {"onprem": "Available on-premise", "cloud": "Available cloud", "preview": "Preview",
          "research": "Research, Development, or Internal (RDI)"}
# Notes may stay empty: the summarizer joins them; everything else empty is listed as unknown.
MAY_BE_EMPTY = {"hw_notes", "sw_notes"}


def _cpuinfo() -> dict:
    info = {}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return info
    names = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    if names:
        info["host_processor_model_name"] = names[0].strip()
    sockets = set(re.findall(r"^physical id\s*:\s*(\d+)$", text, re.M))
    if sockets:
        info["host_processors_per_node"] = str(len(sockets))
    cores = re.findall(r"^cpu cores\s*:\s*(\d+)$", text, re.M)
    if cores:
        info["host_processor_core_count"] = cores[0]
    info["host_processor_vcpu_count"] = str(os.cpu_count() or "")
    mhz = re.findall(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
    if mhz:
        info["host_processor_frequency"] = f"{float(mhz[0]):.0f} MHz (as read while packaging)"
    return info


def _meminfo() -> dict:
    try:
        text = open("/proc/meminfo").read()
    except OSError:
        return {}
    kib = re.search(r"^MemTotal:\s*(\d+) kB", text, re.M)
    return {"host_memory_capacity": f"{int(kib.group(1)) / 2**20:.0f} GiB"} if kib else {}


def _gpus() -> dict:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [r.split(",") for r in out.strip().splitlines() if r.strip()]
    if not rows:
        return {}
    return {"accelerator_model_name": rows[0][0].strip(), "accelerators_per_node": str(len(rows)),
            "accelerator_memory_capacity": rows[0][1].strip() if len(rows[0]) > 1 else ""}


def _world_size(snapshot: dict) -> int | None:
    match = re.search(r"world=(\d+)", snapshot.get("layout", ""))
    return int(match.group(1)) if match else None


def describe(org: str, system: str, division: str, runs: list, this_machine: bool = True) -> tuple[dict, list[str]]:
    """(the system json, the fields left for the submitter)."""
    first = runs[0]
    desc = {name: "" for name in REQUIRED_FIELDS}
    desc.update(submitter=org, division=division, system_name=system,
                status=STATUS.get(first.status_key, ""))
    notes = []
    if this_machine:
        desc.update({k: v for k, v in {**_cpuinfo(), **_meminfo(), **_gpus()}.items() if v})
        notes.append("host facts read on the packaging machine")
    sysjson = first.sysjson
    if sysjson:  # the training node's own description wins over the packaging machine's
        desc.update({k: str(v) for k, v in sysjson.items() if k in desc and v not in ("", None, "none")})
        notes.append("node facts from run.sub's SYSJSON")
    world = _world_size(first.snapshot)
    # One process without a launcher is one node; otherwise only run.sub's SYSJSON knows the node count.
    nodes = int(desc["number_of_nodes"] or 0) or (1 if first.snapshot.get("launcher") == "single" else 0)
    if nodes and world:
        desc["number_of_nodes"] = str(nodes)
        desc["accelerators_per_node"] = str(world // nodes)
    if first.snapshot.get("device") == "cpu":
        desc["accelerator_model_name"] = "none (CPU)"
        desc["accelerators_per_node"] = "0"
        desc["accelerator_memory_capacity"] = "n/a"
    packages = first.snapshot.get("packages", {})
    if "torch" in packages:
        desc["framework"] = f"PyTorch {packages['torch']}"
        desc["other_software_stack"] = ", ".join(f"{k} {v}" for k, v in sorted(packages.items()) if k != "torch")
    if not sysjson or not desc["operating_system"]:
        desc["operating_system"] = platform.platform() if this_machine else ""
    desc["sw_notes"] = f"mlperf-stack at git {first.git_revision}; " + "; ".join(notes)
    unknown = [k for k in REQUIRED_FIELDS if desc[k] == "" and k not in MAY_BE_EMPTY]
    return desc, unknown
