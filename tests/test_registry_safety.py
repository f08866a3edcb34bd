"""Registering and loading never run code from an artifact (issue 8, item 1)."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from rendezvous import CallableModel, Registry
from rendezvous.errors import UnsafeArtifactError
from tests.conftest import XY
from tests.registry_db import registry, registry_url  # noqa: F401  (both backends)


def _model() -> LogisticRegression:
    x = np.random.default_rng(0).normal(size=(60, 3))
    return LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))


def _with_attribute(data: bytes, attr: str, node: dict[str, object]) -> bytes:
    """A skops file whose model carries one more attribute, built by ``node`` at load."""
    src = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(src.read("schema.json"))
    state = schema["content"]  # the model's attribute dict: values and their key types
    state["content"][attr] = node
    state["key_types"]["content"].append(state["key_types"]["content"][0])  # a str key
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for item in src.infolist():
            body = json.dumps(schema).encode() if item.filename == "schema.json" else \
                src.read(item.filename)
            dst.writestr(item, body)
    return buf.getvalue()


def _reduce_call(module: str, func: str, arg: str) -> dict[str, object]:
    """skops' ConstructorFromReduceNode calling ``module.func(arg)`` when the model loads."""
    return {"__class__": func, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins",
                        "__loader__": "TupleNode", "content": [
                            {"__class__": "str", "__module__": "builtins",
                             "__loader__": "JsonNode", "content": json.dumps(arg),
                             "is_json": True, "__id__": 2}], "__id__": 1}}


@pytest.fixture
def evil_skops(tmp_path: Path) -> tuple[Path, Path]:
    import skops.io as sio

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.skops"
    path.write_bytes(_with_attribute(sio.dumps(_model()), "evil",
                                     _reduce_call("os", "system", f"touch {marker}")))
    return path, marker


def test_the_allowlist_keeps_code_and_files_out() -> None:
    from rendezvous.flavors.trust import refused

    data = ["numpy.ndarray", "numpy.float32", "numpy.dtype", "numpy.log1p",
            "sklearn.tree._tree.Tree", "scipy.sparse._csr.csr_matrix",
            "builtins.dict", "collections.OrderedDict"]
    code = ["numpy.memmap", "numpy.load", "numpy.lib.npyio.load", "numpy.fromfile",
            "scipy.io.loadmat", "sklearn.utils._testing.assert_run_python_script",
            "builtins.eval", "builtins.getattr", "posix.system", "functools.partial",
            "collections.defaultdict", "sklearn.__loader__", "mymodule.Thing"]
    assert refused(data) == []
    assert refused(code) == sorted(code)
    assert refused(code, trusted=["mymodule.Thing"]) == sorted(set(code) - {"mymodule.Thing"})


def test_the_payload_is_real(evil_skops: tuple[Path, Path]) -> None:
    """What the registry used to do (trust the file's own type list) runs the command."""
    import skops.io as sio

    path, marker = evil_skops
    data = path.read_bytes()
    sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert marker.exists()


def test_malicious_skops_is_refused_and_never_runs(registry: Registry,
                                                   evil_skops: tuple[Path, Path]) -> None:
    path, marker = evil_skops
    with pytest.raises(UnsafeArtifactError, match=r"not known to be data: (os|posix)\.system"):
        registry.register_file("evil", path)
    assert not marker.exists()
    assert registry.versions() == []


def test_naming_the_type_is_explicit_and_recorded(registry: Registry, tmp_path: Path) -> None:
    """An operator-named type is trusted, recorded, and still nothing else is."""
    import skops.io as sio

    path = tmp_path / "dated.skops"
    node = {"__class__": "date", "__module__": "datetime",
            "__loader__": "ConstructorFromReduceNode",
            "content": sio_tuple_of_ints(2024, 1, 2)}
    path.write_bytes(_with_attribute(sio.dumps(_model()), "trained_on", node))
    with pytest.raises(UnsafeArtifactError, match=r"--trust datetime\.date"):
        registry.register_file("dated", path)
    mv = registry.register_file("dated", path, trust=["datetime.date", "unused.Type"])
    assert mv.flavor_meta["user_trusted"] == ["datetime.date"]
    model = registry.load(mv.ref).model  # type: ignore[attr-defined]
    assert str(model.trained_on) == "2024-01-02"


def sio_tuple_of_ints(*values: int) -> dict[str, object]:
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
            "content": [{"__class__": "int", "__module__": "builtins", "__loader__": "JsonNode",
                         "content": str(v), "is_json": True, "__id__": 10 + i}
                        for i, v in enumerate(values)], "__id__": 9}


def test_a_row_edited_to_widen_trust_is_refused_at_load(registry: Registry,
                                                        evil_skops: tuple[Path, Path]) -> None:
    """Swapping in the malicious bytes and their types behind the registry's back fails."""
    path, marker = evil_skops
    mv = registry.register("clf", _model(), example=np.zeros((2, 3)))
    data = path.read_bytes()
    digest = registry.artifacts.put(data)
    import sqlalchemy as sa

    from rendezvous.registry.store import model_versions

    with registry.store.engine.begin() as conn:
        conn.execute(model_versions.update().values(
            digest=digest, flavor_meta={"trusted_types": ["posix.system", "os.system"]}))
    with pytest.raises(UnsafeArtifactError, match="system"):
        registry.load(mv.ref)
    assert not marker.exists()
    del sa


def test_pickle_files_need_the_opt_in(registry: Registry, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_model()))
    with pytest.raises(UnsafeArtifactError) as info:
        registry.register_file("p", path)
    assert "RENDEZVOUS_ALLOW_PICKLE=1" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setenv("RENDEZVOUS_ALLOW_PICKLE", "1")
    x = np.random.default_rng(1).normal(size=(5, 3))
    mv = registry.register_file("p", path, example=x)
    assert mv.flavor == "pickle" and not marker.exists()
    out = registry.load(mv.ref).predict({f"f{i}": x[:, i] for i in range(3)}, 5)
    np.testing.assert_array_equal(out["predictions"], _model().predict(x))
    monkeypatch.delenv("RENDEZVOUS_ALLOW_PICKLE")
    with pytest.raises(UnsafeArtifactError, match="RENDEZVOUS_ALLOW_PICKLE"):
        registry.load(mv.ref)


def test_callables_only_from_trusted_modules(registry: Registry,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for ref in ("os:system", "subprocess:getoutput", "builtins:eval", "operator:methodcaller"):
        with pytest.raises(UnsafeArtifactError, match="never trusted"):
            registry.register("bad", CallableModel(ref, cmd="true"), signature=XY)
    monkeypatch.setenv("RENDEZVOUS_TRUSTED_MODULES", "os,tests")
    with pytest.raises(UnsafeArtifactError, match="never trusted"):
        registry.register("bad", CallableModel("os:system"), signature=XY)
    monkeypatch.setenv("RENDEZVOUS_TRUSTED_MODULES", "mypkg")
    with pytest.raises(UnsafeArtifactError, match="not in RENDEZVOUS_TRUSTED_MODULES"):
        registry.register("m", CallableModel("tests.models:doubler"), signature=XY)
    monkeypatch.setenv("RENDEZVOUS_TRUSTED_MODULES", "tests")
    mv = registry.register("m", CallableModel("tests.models:doubler"), signature=XY)
    monkeypatch.setenv("RENDEZVOUS_TRUSTED_MODULES", "mypkg")
    with pytest.raises(UnsafeArtifactError, match="not in RENDEZVOUS_TRUSTED_MODULES"):
        registry.load(mv.ref)  # checked again where it loads
