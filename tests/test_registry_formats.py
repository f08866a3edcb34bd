"""Every flavor with a real small model on generated data: register from its file, load through
the registry (digest verified), predict a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rendezvous import Registry
from rendezvous.errors import FlavorError, MissingDependencyError
from tests.registry_db import registry, registry_url  # noqa: F401  (both backends)


def _data(n: int = 300, k: int = 4, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, k))
    score = x[:, 0] + 0.5 * x[:, 1]
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return x, y


def _columns(x: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    names = names or [f"f{i}" for i in range(x.shape[1])]
    return {n: x[:, i] for i, n in enumerate(names)}


def test_xgboost_json_and_ubj(registry: Registry, tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    x, y = _data(classes=3)
    model = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(x, y)
    for suffix in (".json", ".ubj"):
        path = tmp_path / f"model{suffix}"
        model.save_model(path)
        mv = registry.register_file("xgb", path)
        assert mv.flavor == "xgboost" and mv.signature["inputs"][0]["name"] == "f0"
        out = registry.load(mv.ref).predict(_columns(x[:20]), 20)
        np.testing.assert_allclose(out["probabilities"], model.predict_proba(x[:20]),
                                   rtol=1e-5)
        np.testing.assert_array_equal(out["predictions"], model.predict(x[:20]))
    reg = xgb.XGBRegressor(n_estimators=5).fit(x, x[:, 0])
    mv = registry.register("xgb-reg", reg, example=x)
    out = registry.load(mv.ref).predict(_columns(x[:7]), 7)
    np.testing.assert_allclose(out["predictions"], reg.predict(x[:7]), rtol=1e-5)


def test_lightgbm_text_model(registry: Registry, tmp_path: Path) -> None:
    lgb = pytest.importorskip("lightgbm")
    x, y = _data()
    names = ["age", "income", "tenure", "score"]
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7},
                        lgb.Dataset(x, y, feature_name=names), num_boost_round=10)
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    mv = registry.register_file("lgb", path)
    assert mv.flavor == "lightgbm"
    assert [c["name"] for c in mv.signature["inputs"]] == names
    out = registry.load(mv.ref).predict(_columns(x[:15], names), 15)
    np.testing.assert_allclose(out["probabilities"][:, 1], booster.predict(x[:15]), rtol=1e-6)
    assert set(out["predictions"]) <= {0, 1}


def test_onnx_from_skl2onnx(registry: Registry, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier

    x, y = _data(classes=3)
    model = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    for zipmap in (False, True):
        onx = skl2onnx.convert_sklearn(model, initial_types=[("input", FloatTensorType(
            [None, 4]))], options={id(model): {"zipmap": zipmap}})
        path = tmp_path / f"rf-{zipmap}.onnx"
        path.write_bytes(onx.SerializeToString())
        mv = registry.register_file("rf-onnx", path)
        assert mv.flavor == "onnx" and mv.signature["inputs"][0]["datatype"] == "FP32"
        out = registry.load(mv.ref).predict(_columns(x[:25]), 25)
        np.testing.assert_array_equal(out["predictions"], model.predict(x[:25].astype(np.float32)))
        np.testing.assert_allclose(out["probabilities"],
                                   model.predict_proba(x[:25].astype(np.float32)), atol=1e-5)


def test_flavor_from_suffix_or_flag(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x00\x01")
    with pytest.raises(FlavorError, match=r"\.onnx \(onnx\).*pass --flavor"):
        registry.register_file("m", path)
    with pytest.raises(FlavorError, match="not an XGBoost model file"):
        registry.register_file("m", path, flavor="xgboost")
    with pytest.raises(FlavorError, match="cannot be registered from a file"):
        registry.register_file("m", path, flavor="python")


def test_a_missing_extra_is_one_line_with_the_pip_command(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "lightgbm", None)  # as if not installed
    path = tmp_path / "model.txt"
    path.write_text("tree\nversion=v4\n")
    with pytest.raises(MissingDependencyError) as info:
        registry.register_file("m", path)
    assert str(info.value) == ("LightGBM models: the 'lightgbm' package is missing; "
                               "pip install 'rendezvous-ml[lightgbm]'")
