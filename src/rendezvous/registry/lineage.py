"""What registration records about where a model came from: data fingerprint, code version,
environment and parameters. Each helper answers from the calling process; none raises."""

from __future__ import annotations

import hashlib
import math
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# Libraries whose version changes what a model answers; recorded when installed.
_LIBRARIES = ("rendezvous-ml", "numpy", "scipy", "scikit-learn", "skops", "xgboost",
              "lightgbm", "onnxruntime", "mlflow", "mlflow-skinny", "pandas")


def fingerprint(example: Any) -> tuple[str, dict[str, Any]]:
    """A digest and a small summary of the training data, for lineage and drift baselines."""
    if example is None:
        return "", {}
    if hasattr(example, "to_numpy"):
        arr = example.to_numpy()
    elif isinstance(example, dict):
        arr = np.column_stack([np.asarray(v) for v in example.values()])
    else:
        arr = np.asarray(example)
    digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    summary: dict[str, Any] = {"n_rows": int(arr.shape[0])}
    if arr.dtype.kind in "fiub" and arr.ndim == 2:
        a = arr.astype(float)
        summary["mean"] = [round(float(v), 6) for v in a.mean(axis=0)]
        summary["std"] = [round(float(v), 6) for v in a.std(axis=0)]
    return digest, summary


def git_version(cwd: Path | None = None) -> tuple[str, bool | None]:
    """The commit checked out where the caller runs and whether the tree has uncommitted
    changes; ``("", None)`` outside a git repository or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd or Path.cwd(), capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "", None
    return commit, dirty


def environment() -> dict[str, Any]:
    """Python, platform and the versions of the libraries that shape predictions."""
    libs: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "libraries": libs}


def model_params(model: Any) -> dict[str, Any]:
    """A model's hyper-parameters as JSON values, when it exposes scikit-learn's get_params."""
    get = getattr(model, "get_params", None)
    if get is None:
        return {}
    try:
        params = get(deep=False)
    except Exception:  # a third-party get_params may fail on partial objects; params are optional
        return {}
    return {k: v for k, v in params.items()
            if v is None or isinstance(v, bool | int | float | str)}


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers and PostgreSQL's
    json type refuses them (a float column of example rows gets NaN back from None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
