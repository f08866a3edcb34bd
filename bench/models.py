"""The one reference model every contender serves, and the rows the load generator sends.

Runs under whichever environment serves the artifact, so each file is written by the same
scikit-learn that will load it: ``python -m bench.models KIND OUT_DIR`` with KIND one of
``joblib`` (MLServer, FastAPI) or ``mlflow`` (MLflow). Builds are cached: a manifest records
the recipe and library versions, and a matching manifest makes the command a no-op.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Bump when the data, the model or the artifact layout changes, to invalidate caches.
RECIPE = 2
N_FEATURES = 20
N_REQUEST_ROWS = 256
FEATURE_NAMES = [f"f{i}" for i in range(N_FEATURES)]
MANIFEST = "manifest.json"
#: What skops must be told to trust to load the reference model (and its HGB variants).
HGB_TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


@dataclass(frozen=True)
class Split:
    """The reference data set, split once, the same way for every contender."""

    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any


def reference_split() -> Split:
    """make_classification(20000, 20 features, 8 informative), 20 % held out for requests."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(
        n_samples=20000, n_features=N_FEATURES, n_informative=8, random_state=0
    )
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    return Split(x_train, x_test, y_train, y_test)


def train_reference(split: Split | None = None, *, named_columns: bool = False) -> Any:
    """The reference model: HistGradientBoostingClassifier(max_iter=100).

    ``random_state=0`` because with 16,000 training rows early stopping is on and draws its
    validation split at random: without it every environment would train a different model.
    ``named_columns`` fits on a DataFrame with ``FEATURE_NAMES`` (same trees, same
    predictions) for servers that pass named columns, so scikit-learn does not warn on
    every request that the names were not seen in training.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    split = split or reference_split()
    x = split.x_train
    if named_columns:
        import pandas as pd

        x = pd.DataFrame(x, columns=FEATURE_NAMES)
    return HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(x, split.y_train)


def request_rows(n: int = N_REQUEST_ROWS) -> list[list[float]]:
    """The first ``n`` held-out rows, as plain floats: one request each."""
    return [[float(v) for v in row] for row in reference_split().x_test[:n]]


def _versions() -> dict[str, str]:
    import sklearn

    return {"recipe": str(RECIPE), "scikit-learn": sklearn.__version__,
            "python": sys.version.split()[0]}


def cached_build(out: Path, kind: str, build: Callable[[Path], None]) -> Path:
    """Run ``build(out)`` unless ``out`` already holds the same recipe's artifact."""
    manifest = out / MANIFEST
    want = {"kind": kind, **_versions()}
    if manifest.exists() and json.loads(manifest.read_text()) == want:
        return out
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(want))
    tmp.replace(manifest)
    return out


def _build_joblib(out: Path) -> None:
    import joblib

    tmp = out / "model.joblib.tmp"
    joblib.dump(train_reference(), tmp)
    tmp.replace(out / "model.joblib")


def _build_mlflow(out: Path) -> None:
    import shutil

    import mlflow.sklearn
    import pandas as pd
    import sklearn
    import skops
    from mlflow.models import infer_signature

    split = reference_split()
    model = train_reference(split, named_columns=True)
    frame = pd.DataFrame(split.x_test[:5], columns=FEATURE_NAMES)
    target = out / "model"
    staging = out / "model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    mlflow.sklearn.save_model(
        model,
        str(staging),
        signature=infer_signature(frame, model.predict(frame)),
        # Stated, not inferred: inference imports the model in a subprocess and takes seconds.
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"],
        # MLflow's default format is skops, which refuses HGB's tree nodes unless trusted.
        skops_trusted_types=HGB_TRUSTED_TYPES,
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "joblib": _build_joblib,
    "mlflow": _build_mlflow,
}


def build(kind: str, out: Path) -> Path:
    """Write the reference model as ``kind`` under ``out`` (cached); returns ``out``."""
    try:
        builder = BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown artifact kind {kind!r}; known: {', '.join(BUILDERS)}") from None
    return cached_build(out, kind, builder)


def main(argv: list[str]) -> int:
    """``python -m bench.models KIND OUT_DIR``."""
    if len(argv) != 2:
        print(f"usage: python -m bench.models {{{','.join(BUILDERS)}}} OUT_DIR", file=sys.stderr)
        return 2
    build(argv[0], Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
