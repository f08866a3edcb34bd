"""The benchmark's own virtual environments, created and updated on demand.

* ``bench/.venv`` (``bench/requirements.txt``): the harness itself, MLflow and the FastAPI
  baseline;
* ``bench/.venv-mlserver`` (``bench/requirements-mlserver.txt``): MLServer, which needs older
  versions of some shared packages (see that file).

Standard library only: this module runs under whichever interpreter started the harness
(``make bench`` uses the project's ``.venv``) before the benchmark's dependencies exist. None
of the contenders' packages enter the project's environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
WORK = BENCH_DIR / ".work"

#: Set on re-exec so the harness still knows the project interpreter (for Rendezvous).
PROJECT_PYTHON_ENV = "BENCH_PROJECT_PYTHON"


@dataclass(frozen=True)
class VirtualEnv:
    """A venv under ``bench/`` installed from one requirements file."""

    dir: Path
    requirements: Path

    def bin(self, name: str) -> Path:
        """A console script or the interpreter inside this environment."""
        return self.dir / "bin" / name

    @property
    def python(self) -> Path:
        return self.bin("python")

    @property
    def _stamp(self) -> Path:
        return self.dir / ".installed"

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(self.requirements.read_bytes())
        digest.update(f"{sys.version_info[:3]}".encode())
        return digest.hexdigest()

    def is_current(self) -> bool:
        """True when the venv exists and was installed from today's requirements file."""
        try:
            return self.python.exists() and self._stamp.read_text() == self._fingerprint()
        except FileNotFoundError:
            return False

    def mark_current(self) -> None:
        """Record that the venv holds today's requirements (``ensure`` after installing them;
        ``bench/offline_venvs.sh`` after installing them from carried wheels)."""
        tmp = self._stamp.with_suffix(".tmp")
        tmp.write_text(self._fingerprint())
        tmp.replace(self._stamp)

    def ensure(self, *, log: Callable[[str], object] = print) -> Path:
        """Create the venv and install its requirements unless already current.

        Returns the interpreter. Fast on re-runs: one file read and one hash.
        """
        if self.is_current():
            return self.python
        with _locked():
            if self.is_current():
                return self.python
            name = self.dir.relative_to(ROOT)
            if not self.python.exists():
                log(f"creating {name} (first run only)")
                subprocess.run([sys.executable, "-m", "venv", str(self.dir)], check=True)
                subprocess.run([str(self.python), "-m", "pip", "install", "-q", "--upgrade",
                                "pip"], check=True)
            log(f"installing {self.requirements.relative_to(ROOT)} into {name} "
                "(about a minute, only when that file changed)")
            subprocess.run([str(self.python), "-m", "pip", "install", "-q", "-r",
                            str(self.requirements)], check=True)
            self.mark_current()
        return self.python


BENCH = VirtualEnv(BENCH_DIR / ".venv", BENCH_DIR / "requirements.txt")
MLSERVER = VirtualEnv(BENCH_DIR / ".venv-mlserver", BENCH_DIR / "requirements-mlserver.txt")


def project_bin(name: str) -> Path:
    """A console script or the interpreter inside the project's environment."""
    python = os.environ.get(PROJECT_PYTHON_ENV)
    if python:
        return Path(python).parent / name
    if sys.prefix != sys.base_prefix and not _in(BENCH):
        # Keep the venv's own path: resolving the symlink would escape the venv.
        return Path(sys.executable).parent / name
    return ROOT / ".venv" / "bin" / name


def _in(env: VirtualEnv) -> bool:
    return Path(sys.prefix).resolve() == env.dir.resolve()


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


def reexec_in_bench_venv(module: str, argv: list[str]) -> None:
    """Replace this process with ``bench/.venv/bin/python -m MODULE ARGV`` unless already there.

    Returns only when the current interpreter already is the benchmark's.
    """
    if _in(BENCH):
        return
    python = BENCH.ensure()
    env = dict(os.environ)
    env.setdefault(PROJECT_PYTHON_ENV, str(project_bin("python")))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    sys.stdout.flush()
    os.execve(python, [str(python), "-m", module, *argv], env)
