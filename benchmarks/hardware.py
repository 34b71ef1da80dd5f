"""What the benchmark ran on: CPU, ISA flags, OpenVINO device properties, package versions, command line.

Every result file carries this record, so numbers from different machines are never compared blindly.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

#: ISA flags that decide which OpenVINO CPU kernels run (bf16 / int8 paths)
_ISA_PREFIXES = ("avx512", "amx", "avx_vnni", "avx2", "fma", "f16c", "avx_ne_convert", "avx_vnni_int8")
_ISA_EXACT = ("bf16", "sse4_2")

#: CPU plugin properties that change speed or numerics of LLM inference
CPU_PROPERTIES = (
    "FULL_DEVICE_NAME",
    "OPTIMIZATION_CAPABILITIES",
    "INFERENCE_PRECISION_HINT",
    "KV_CACHE_PRECISION",
    "KEY_CACHE_PRECISION",
    "VALUE_CACHE_PRECISION",
    "KEY_CACHE_GROUP_SIZE",
    "VALUE_CACHE_GROUP_SIZE",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE",
    "PERFORMANCE_HINT",
    "EXECUTION_MODE_HINT",
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
    "ENABLE_HYPER_THREADING",
    "ENABLE_CPU_PINNING",
    "SCHEDULING_CORE_TYPE",
)

PACKAGES = (
    "optimum-dynexec",
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "optimum",
    "optimum-intel",
    "transformers",
    "tokenizers",
    "torch",
    "nncf",
    "numpy",
)


def _cpuinfo() -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": []}
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return info
    physical = set()
    current_physical = "0"
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            info["model"] = value
        elif key == "flags" and not info["flags"]:
            info["flags"] = value.split()
        elif key == "physical id":
            current_physical = value
        elif key == "core id":
            physical.add((current_physical, value))
    if physical:
        info["physical_cores"] = len(physical)
    return info


def _memory_gb() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _ov_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_ov_value(v) for v in value]
    return str(value)


def cpu_device_properties(core=None) -> dict[str, Any]:
    """The CPU plugin's values of :data:`CPU_PROPERTIES` (its defaults, before any compile-time config)."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = core or ov.Core()
    props: dict[str, Any] = {}
    for name in CPU_PROPERTIES:
        try:
            props[name] = _ov_value(core.get_property("CPU", name))
        except Exception:  # property not supported by this plugin version
            continue
    return props


def compiled_model_properties(compiled_model) -> dict[str, Any]:
    """The values a compiled model actually runs with (the hints resolved by the plugin)."""
    props: dict[str, Any] = {}
    for name in CPU_PROPERTIES:
        if name in ("FULL_DEVICE_NAME", "OPTIMIZATION_CAPABILITIES"):
            continue
        try:
            props[name] = _ov_value(compiled_model.get_property(name))
        except Exception:
            continue
    return props


def package_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_state(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> Optional[str]:
        try:
            return subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except Exception:
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def collect(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """The full record: machine, runtime, packages, code version, command line."""
    cpu = _cpuinfo()
    flags = cpu.pop("flags", [])
    isa = sorted(f for f in flags if f.startswith(_ISA_PREFIXES) or f in _ISA_EXACT)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        import openvino as ov

        ov_version = ov.get_version()
    except ImportError:
        ov_version = None
    argv = list(sys.argv if argv is None else argv)
    return {
        "cpu_model": cpu.get("model"),
        "isa_flags": isa,
        "has_avx512": any(f.startswith("avx512") for f in isa),
        "has_amx": any(f.startswith("amx") for f in isa),
        "has_bf16": any("bf16" in f for f in isa),
        "logical_cpus": os.cpu_count(),
        "physical_cores": cpu.get("physical_cores"),
        "cpus_available": affinity,
        "memory_gb": _memory_gb(),
        "load_average_at_start": load_average(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "openvino_version": ov_version,
        "openvino_cpu_properties": cpu_device_properties(),
        "packages": package_versions(),
        "git": _git_state(Path(__file__).resolve().parents[1]),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", "benchmarks.run", *argv[1:]])
        if argv and argv[0].endswith(("run.py", "__main__.py")) else " ".join(shlex.quote(a) for a in argv),
        "cwd": os.getcwd(),
        "environment": {k: v for k, v in os.environ.items() if k.startswith(("OV_", "OMP_", "OPTIMUM_DYNEXEC", "OPENVINO"))},
    }


def summary_line(record: dict[str, Any]) -> str:
    """One line for the markdown header."""
    isa = [f for f in record.get("isa_flags", []) if f.startswith(("avx512f", "avx512_bf16", "amx", "avx512_vnni"))]
    return (
        f"{record.get('cpu_model')}; {record.get('cpus_available')} CPUs available "
        f"({record.get('physical_cores')} physical cores); ISA: {', '.join(isa) or 'no AVX-512/AMX'}; "
        f"OpenVINO {record.get('openvino_version')}"
    )
