"""What the numbers were measured on: CPU, cores, memory, OS, and the versions that ran."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from pathlib import Path

from bench.venv import ROOT, VirtualEnv, project_bin

#: Distributions whose versions go into the results, from each environment that has them.
PACKAGES = ["rendezvous-ml", "mlflow", "mlserver", "mlserver-sklearn", "fastapi", "starlette",
            "gunicorn", "uvicorn", "uvicorn-worker", "uvloop", "httptools", "scikit-learn",
            "numpy", "pandas", "joblib", "skops"]

_VERSIONS_SCRIPT = """
import importlib.metadata as m, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def package_versions(python: Path, names: list[str]) -> dict[str, str]:
    """Installed versions of ``names`` in the environment of ``python`` (empty if absent)."""
    if not python.exists():
        return {}
    with contextlib.suppress(OSError, subprocess.SubprocessError, json.JSONDecodeError):
        proc = subprocess.run([str(python), "-c", _VERSIONS_SCRIPT, *names],
                              capture_output=True, text=True, timeout=60, check=True)
        return dict(json.loads(proc.stdout))
    return {}


def _wrk_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
        first = (proc.stdout or proc.stderr).splitlines()
        # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer" -> up to the "["
        return first[0].split("[")[0].strip() if first else "unknown"
    return "unknown"


def machine_info(venvs: list[VirtualEnv]) -> dict[str, object]:
    """The ``machine`` section of serving.json, with package versions from each of ``venvs``."""
    versions = {"project": package_versions(project_bin("python"), PACKAGES)}
    for env in venvs:
        versions[str(env.dir.relative_to(ROOT))] = package_versions(env.python, PACKAGES)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "load_generator": _wrk_version(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
        "versions": versions,
    }
