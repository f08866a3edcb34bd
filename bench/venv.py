"""The benchmark's own virtual environment, ``bench/.venv``, created and updated on demand.

Standard library only: this module runs under whichever interpreter started the harness
(``make bench`` uses the project's ``.venv``) before the benchmark's dependencies exist.
The contenders' packages (MLflow, MLServer, FastAPI, gunicorn) never enter the project's
environment; they live here, installed from ``bench/requirements.txt``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
WORK = BENCH_DIR / ".work"
VENV = BENCH_DIR / ".venv"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
STAMP = VENV / ".installed"

#: Set on re-exec so the harness still knows the project interpreter (for Rendezvous).
PROJECT_PYTHON_ENV = "BENCH_PROJECT_PYTHON"


def bench_bin(name: str) -> Path:
    """A console script or interpreter inside ``bench/.venv``."""
    return VENV / "bin" / name


def project_bin(name: str) -> Path:
    """A console script or interpreter inside the project's environment."""
    python = os.environ.get(PROJECT_PYTHON_ENV)
    if python:
        return Path(python).parent / name
    if sys.prefix != sys.base_prefix and not _in_bench_venv():
        # Keep the venv's own path: resolving the symlink would escape the venv.
        return Path(sys.executable).parent / name
    return ROOT / ".venv" / "bin" / name


def _in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _fingerprint() -> str:
    """What the installed environment must match: the requirements and the base Python."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(f"{sys.version_info[:3]}".encode())
    return digest.hexdigest()


def is_current() -> bool:
    """True when ``bench/.venv`` exists and was installed from today's requirements."""
    try:
        return bench_bin("python").exists() and STAMP.read_text() == _fingerprint()
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # Two harnesses bootstrapping at once would otherwise interleave pip installs.
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure(*, log: Callable[[str], object] = print) -> Path:
    """Create ``bench/.venv`` and install the requirements unless already current.

    Returns the environment's interpreter. Fast on re-runs: one file read and one hash.
    """
    python = bench_bin("python")
    if is_current():
        return python
    with _locked():
        if is_current():
            return python
        if not python.exists():
            log(f"creating {VENV.relative_to(ROOT)} (first run only)")
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                           check=True)
        log(f"installing {REQUIREMENTS.relative_to(ROOT)} into {VENV.relative_to(ROOT)} "
            "(about a minute, only when the file changed)")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                       check=True)
        tmp = STAMP.with_suffix(".tmp")
        tmp.write_text(_fingerprint())
        tmp.replace(STAMP)
    return python


def reexec_in_bench_venv(module: str, argv: list[str]) -> None:
    """Replace this process with ``bench/.venv/bin/python -m MODULE ARGV`` unless already there.

    Returns only when the current interpreter already is the benchmark's.
    """
    if _in_bench_venv():
        return
    python = ensure()
    env = dict(os.environ)
    env.setdefault(PROJECT_PYTHON_ENV, str(project_bin("python")))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    sys.stdout.flush()
    os.execve(python, [str(python), "-m", module, *argv], env)
