"""`models import mlflow`: models written by a real MLflow, mapped to safe flavors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rendezvous import Registry
from rendezvous.errors import UnsafeArtifactError
from rendezvous.flavors.mlflow import import_model
from tests.registry_db import registry, registry_url  # noqa: F401  (both backends)

mlflow = pytest.importorskip("mlflow")
# MLflow's own advice while it writes models (type hints, requirements): not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:mlflow.*"),
              pytest.mark.filterwarnings("ignore::FutureWarning:mlflow.*")]

NAMES = ["a", "b", "c"]


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    return x, (x[:, 0] - x[:, 2] > 0).astype(int)


def _signature(x: np.ndarray) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("double", n) for n in NAMES]))


def _example(x: np.ndarray) -> dict[str, list[float]]:
    return {n: x[:4, i].tolist() for i, n in enumerate(NAMES)}


def _columns(x: np.ndarray) -> dict[str, np.ndarray]:
    return {n: x[:, i] for i, n in enumerate(NAMES)}


def _sklearn(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(x, y)


def test_sklearn_saved_with_skops(registry: Registry, tmp_path: Path) -> None:
    x, y = _data()
    model = _sklearn(x, y)
    mlflow.sklearn.save_model(model, tmp_path / "m", serialization_format="skops",
                              signature=_signature(x), pip_requirements=[])
    mv = import_model(registry, str(tmp_path / "m"), name="clf")
    assert mv.flavor == "sklearn" and [c["name"] for c in mv.signature["inputs"]] == NAMES
    out = registry.load(mv.ref).predict(_columns(x[:9]), 9)
    np.testing.assert_array_equal(out["predictions"], model.predict(x[:9]))


def test_pickled_sklearn_needs_the_opt_in(registry: Registry, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data()
    mlflow.sklearn.save_model(_sklearn(x, y), tmp_path / "m", serialization_format="cloudpickle",
                              signature=_signature(x), pip_requirements=[])
    with pytest.raises(UnsafeArtifactError, match=r"saved with cloudpickle\) is a pickle.*"
                                                   "RENDEZVOUS_ALLOW_PICKLE=1"):
        import_model(registry, str(tmp_path / "m"), name="clf")
    monkeypatch.setenv("RENDEZVOUS_ALLOW_PICKLE", "1")
    mv = import_model(registry, str(tmp_path / "m"), name="clf")
    assert mv.flavor == "pickle"
    assert registry.load(mv.ref).predict(_columns(x[:3]), 3)["predictions"].shape == (3,)


def test_xgboost_lightgbm_onnx(registry: Registry, tmp_path: Path) -> None:
    import lightgbm as lgb
    import xgboost as xgb
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    x, y = _data()
    xgb_model = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, y)
    mlflow.xgboost.save_model(xgb_model, tmp_path / "xgb", model_format="json",
                              signature=_signature(x), pip_requirements=[])
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y),
                        num_boost_round=5)
    mlflow.lightgbm.save_model(booster, tmp_path / "lgb", signature=_signature(x),
                               pip_requirements=[])
    onx = convert_sklearn(_sklearn(x, y), initial_types=[("input", FloatTensorType([None, 3]))],
                          options={"zipmap": False})
    mlflow.onnx.save_model(onx, tmp_path / "onnx", pip_requirements=[])
    for source, flavor in (("xgb", "xgboost"), ("lgb", "lightgbm"), ("onnx", "onnx")):
        mv = import_model(registry, str(tmp_path / source))
        assert (mv.name, mv.flavor) == (source, flavor)
        out = registry.load(mv.ref).predict(
            _columns(x[:6]) if flavor != "onnx" else {f"f{i}": x[:6, i] for i in range(3)}, 6)
        assert out["probabilities"].shape == (6, 2)
    assert "xgb@1" in {v.ref for v in registry.search(tags={"mlflow_flavor": "xgboost"})}


def test_lightgbm_sklearn_wrapper_needs_its_types_named(registry: Registry,
                                                       tmp_path: Path) -> None:
    import lightgbm as lgb

    x, y = _data()
    model = lgb.LGBMClassifier(n_estimators=4, verbose=-1).fit(x, y)
    mlflow.lightgbm.save_model(model, tmp_path / "m", serialization_format="skops",
                               pip_requirements=[])
    types = ["lightgbm.basic.Booster", "lightgbm.sklearn.LGBMClassifier"]
    with pytest.raises(UnsafeArtifactError, match=r"--trust lightgbm\.basic\.Booster"):
        import_model(registry, str(tmp_path / "m"), name="lgb")
    mv = import_model(registry, str(tmp_path / "m"), name="lgb", trust=types)
    assert mv.flavor == "sklearn" and mv.flavor_meta["user_trusted"] == types
    out = registry.load(mv.ref).predict({f"f{i}": x[:5, i] for i in range(3)}, 5)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(x[:5]))


def test_python_function_loader_is_refused(registry: Registry, tmp_path: Path) -> None:
    class Model(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        # No type hints: MLflow would infer (and warn about) a schema from them.
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "py", python_model=Model(), pip_requirements=[])
    with pytest.raises(UnsafeArtifactError, match=r"loader module 'mlflow\.pyfunc\.model' runs"):
        import_model(registry, str(tmp_path / "py"), name="py")


# MLflow's SQL tracking store uses a SQLAlchemy loader that SQLAlchemy 2.1 deprecates.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_runs_and_models_uris_with_a_tracking_server(registry: Registry, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the local tracking store writes its artifacts here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    x, y = _data()
    try:
        with mlflow.start_run() as run:
            mlflow.log_param("C", "1.0")
            mlflow.log_metric("auc", 0.91)
            mlflow.sklearn.log_model(_sklearn(x, y), name="model", serialization_format="skops",
                                     signature=_signature(x), input_example=_example(x),
                                     pip_requirements=[], registered_model_name="churn")
    finally:
        mlflow.set_tracking_uri(None)
    mv = import_model(registry, f"runs:/{run.info.run_id}/model", tracking_uri=uri, name="churn")
    assert mv.run_ref == f"mlflow:runs/{run.info.run_id}"
    assert mv.params["C"] == "1.0" and mv.metrics == {"auc": 0.91}
    assert mv.data_summary["example_rows"]["a"] == pytest.approx(x[:4, 0].tolist())
    again = import_model(registry, "models:/churn/1", tracking_uri=uri)
    assert (again.ref, again.run_ref) == ("churn@2", mv.run_ref)
