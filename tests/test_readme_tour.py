"""The README's tour, run exactly as written (in a temporary data directory)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tour_script() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```bash tour\n(.*?)```", text, re.S)
    assert match, "README.md lost its tour block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "TOUR_HOME": str(tmp_path / "home"), "PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", tour_script()], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "registered demo-logreg@2" in out
    assert "deployment demo at policy version 2" in out
    assert '"model_name":"demo"' in out and "x-rendezvous-model: demo-" in out
    assert "switched to policy 3" in out and "switched to policy 4" in out
    assert re.search(r"wrote \d+ rows to /tmp/demo-inputs.parquet", out)
