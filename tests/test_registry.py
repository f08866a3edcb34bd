"""The registry against real files, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.errors import ArtifactIntegrityError, ConfigError, FlavorError, NotFoundError
from tests.conftest import register_callable
from tests.registry_db import registry, registry_url  # noqa: F401  (both backends)


def _clf() -> tuple[LogisticRegression, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    return LogisticRegression().fit(x, (x[:, 0] + x[:, 1] > 0).astype(int)), x


def test_register_load_predict_and_lineage(registry: Registry) -> None:
    model, x = _clf()
    mv = registry.register("clf", model, example=x, metrics={"acc": 0.9})
    assert (mv.name, mv.version, mv.flavor) == ("clf", 1, "sklearn")
    assert [c["name"] for c in mv.signature["inputs"]] == ["f0", "f1", "f2", "f3"]
    assert mv.data_summary["n_rows"] == 200 and len(mv.data_fingerprint) == 64
    out = registry.load("clf@1").predict({f"f{i}": x[:5, i] for i in range(4)}, 5)
    np.testing.assert_array_equal(out["predictions"], model.predict(x[:5]))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(x[:5]))
    assert registry.register("clf", model, example=x).version == 2


def test_corrupt_artifact_is_refused(registry: Registry) -> None:
    model, x = _clf()
    mv = registry.register("clf", model, example=x)
    path = registry.home / "artifacts" / "sha256" / mv.digest[:2] / mv.digest
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="corrupt"):
        registry.load(mv.ref)


def test_register_skops_file_infers_inputs(registry: Registry, tmp_path: Path) -> None:
    import skops.io as sio

    model, _ = _clf()
    sio.dump(model, tmp_path / "m.skops")
    mv = registry.register_file("file-clf", tmp_path / "m.skops")
    assert len(mv.signature["inputs"]) == 4
    registry.load(mv.ref)


def test_aliases_and_history(registry: Registry) -> None:
    register_callable(registry, "m", "tests.models:doubler")
    register_callable(registry, "m", "tests.models:doubler")
    registry.set_alias("m", "live", 1)
    registry.set_alias("m", "live", 2)
    assert registry.resolve("m@live").version == 2
    hist = registry.alias_history("m")
    assert [(h.from_version, h.to_version) for h in hist] == [(None, 1), (1, 2)]
    with pytest.raises(NotFoundError, match="aliases of 'm': live"):
        registry.resolve("m@nope")
    with pytest.raises(NotFoundError, match="known versions: 1, 2"):
        registry.get("m@9")


def test_unknown_callable_fails_at_registration(registry: Registry) -> None:
    with pytest.raises(FlavorError, match="cannot import"):
        register_callable(registry, "m", "tests.models:nope")


def test_policies_promote_rollback_history(registry: Registry) -> None:
    a = register_callable(registry, "a", "tests.models:doubler")
    b = register_callable(registry, "b", "tests.models:doubler")
    registry.set_alias("b", "next", 1)
    registry.apply_policy("dep", Policy(models=[ModelSpec(a, Role.CHAMPION),
                                                ModelSpec("b@next", Role.CHALLENGER)]))
    pol, rec = registry.policy("dep")
    assert rec.version == 1 and pol.model_names() == [a, b]  # alias resolved when applied
    registry.promote("dep", b)
    assert registry.policy("dep")[0].champion == b
    back = registry.rollback("dep")
    assert registry.policy("dep")[0].champion == a and back.action == "rollback"
    with pytest.raises(ConfigError, match="nothing to roll back"):
        registry.rollback("dep")
    assert [r.action for r in registry.policy_history("dep")] == ["apply", "promote", "rollback"]


def test_deployment_models_must_share_inputs(registry: Registry) -> None:
    model, x = _clf()
    clf = registry.register("clf", model, example=x).ref
    a = register_callable(registry, "a", "tests.models:doubler")
    with pytest.raises(ConfigError, match="same inputs"):
        registry.apply_policy("dep", Policy(models=[ModelSpec(clf, Role.CHAMPION),
                                                    ModelSpec(a, Role.CHALLENGER)]))
    with pytest.raises(NotFoundError, match="unknown deployment 'dep'"):
        registry.policy("dep")
