"""The model registry: versions, aliases, artifacts and deployment policies.

>>> from sklearn.linear_model import LogisticRegression
>>> import numpy as np, tempfile
>>> X = np.random.default_rng(0).normal(size=(50, 3)); y = (X[:, 0] > 0).astype(int)
>>> reg = Registry(tempfile.mkdtemp())
>>> mv = reg.register("clf", LogisticRegression().fit(X, y), example=X)
>>> mv.ref
'clf@1'
>>> reg.load("clf@1").predict({"f0": X[:2, 0], "f1": X[:2, 1], "f2": X[:2, 2]}, 2)["predictions"]
array([1, 1])
"""

from __future__ import annotations

import getpass
import hashlib
import platform
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from rendezvous import config
from rendezvous.core.policy import Policy, promote
from rendezvous.core.schema import Signature, example_columns, infer_signature
from rendezvous.errors import ConfigError, NotFoundError, UnsafeArtifactError
from rendezvous.flavors import base as flavors
from rendezvous.flavors.base import Predictor
from rendezvous.ids import ModelRef, check_name
from rendezvous.registry.artifacts import LocalArtifacts
from rendezvous.registry.reference import drift_reference
from rendezvous.registry.store import AliasChange, ModelVersion, PolicyRecord, SqlStore

__all__ = ["AliasChange", "ModelVersion", "PolicyRecord", "Registry"]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _fingerprint(example: Any) -> tuple[str, dict[str, Any]]:
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


class Registry:
    """Models, versions, aliases and deployments under one data directory (or SQL URL)."""

    def __init__(self, home: Path | str | None = None, *, url: str | None = None) -> None:
        self.home = config.home(home)
        self.store = SqlStore(url or f"sqlite:///{self.home / 'registry.db'}")
        self.artifacts = LocalArtifacts(self.home / "artifacts")

    def close(self) -> None:
        self.store.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models -------------------------------------------------------------------------------

    def register(
        self, name: str, model: Any, *, flavor: str | None = None, example: Any = None,
        signature: Signature | None = None, params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None, description: str = "", code_version: str = "",
        created_by: str | None = None,
    ) -> ModelVersion:
        """Register a new version of model ``name``; its signature comes from ``example``
        (training data) unless given. Returns the new version (``.ref`` is ``name@N``)."""
        check_name(name, "model name")
        fl = flavors.get(flavor) if flavor else flavors.for_model(model)
        data, meta = fl.save(model)
        return self._add(name, fl.name, data, meta, example=example, signature=signature,
                         params=params, metrics=metrics, description=description,
                         code_version=code_version, created_by=created_by)

    def register_file(
        self, name: str, path: Path, *, flavor: str = "sklearn", example: Any = None,
        signature: Signature | None = None, description: str = "",
    ) -> ModelVersion:
        """Register a saved artifact file (``.skops`` for sklearn). The model is loaded once,
        safely, to check it and read its feature names when no example is given."""
        check_name(name, "model name")
        if flavor != "sklearn":
            raise ConfigError(
                f"registering a file supports flavor 'sklearn' (.skops), not {flavor!r}")
        import skops.io as sio

        data = Path(path).read_bytes()
        trusted = sorted(sio.get_untrusted_types(data=data))
        meta = {"trusted_types": trusted}
        if signature is None and example is None:
            model = flavors.get("sklearn").load(data, meta, Signature(()),
                                                allow_pickle=False).model  # type: ignore[attr-defined]
            names = getattr(model, "feature_names_in_", None)
            n = getattr(model, "n_features_in_", None)
            if n is None:
                raise ConfigError(
                    f"cannot tell the inputs of {path}: pass --example DATA (CSV or Parquet)"
                )
            cols = [str(c) for c in names] if names is not None else [f"f{i}" for i in range(n)]
            signature = infer_signature({c: np.zeros(1) for c in cols})
            meta["class"] = type(model).__qualname__
        return self._add(name, flavor, data, meta, example=example, signature=signature,
                         description=description)

    def _add(self, name: str, flavor: str, data: bytes, meta: dict[str, Any], *, example: Any,
             signature: Signature | None, params: dict[str, Any] | None = None,
             metrics: dict[str, Any] | None = None, description: str = "",
             code_version: str = "", created_by: str | None = None) -> ModelVersion:
        if signature is None:
            if example is None:
                raise ConfigError(
                    f"model {name!r} needs a signature: pass example=<training data> or "
                    "signature=Signature(...)"
                )
            signature = infer_signature(example)
        fingerprint, summary = _fingerprint(example)
        if example is not None:
            # A few training rows: model hosts warm the model up on them before it serves.
            summary["example_rows"] = example_columns(example, signature)
            summary["reference"] = drift_reference(example, signature, flavor, data, meta)
        digest = self.artifacts.put(data)
        return self.store.add_version(
            name=name, flavor=flavor, digest=digest, flavor_meta=meta,
            signature=msgspec.to_builtins(signature), params=params or {},
            metrics=metrics or {}, data_fingerprint=fingerprint, data_summary=summary,
            code_version=code_version,
            environment={"python": sys.version.split()[0], "platform": platform.platform()},
            description=description, created_by=created_by or _user(),
        )

    def resolve(self, ref: str | ModelRef) -> ModelRef:
        """``name@alias`` -> ``name@N``; ``name@N`` checked to exist."""
        r = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if r.version is None:
            assert r.alias is not None
            version = self.store.get_alias(r.name, r.alias)
            if version is None:
                known = self.store.aliases_of(r.name)
                raise NotFoundError(
                    "alias", str(r),
                    f"aliases of {r.name!r}: {', '.join(known) or 'none'}; set one with "
                    f"`rendezvous models alias {r.name} ALIAS VERSION`",
                )
            r = ModelRef(r.name, version)
        self.store.get_version(r.name, r.version)  # type: ignore[arg-type]
        return r

    def get(self, ref: str | ModelRef) -> ModelVersion:
        r = self.resolve(ref)
        return self.store.get_version(r.name, r.version)  # type: ignore[arg-type]

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        return self.store.versions(name)

    def signature(self, ref: str | ModelRef) -> Signature:
        return msgspec.convert(self.get(ref).signature, Signature)

    def load(self, ref: str | ModelRef, *, allow_pickle: bool | None = None) -> Predictor:
        """Load a version for prediction; its artifact digest is verified first."""
        mv = self.get(ref)
        data = self.artifacts.get(mv.digest)  # raises on a digest mismatch
        allow = config.ALLOW_PICKLE.get(allow_pickle)
        if mv.flavor_meta.get("pickle") and not allow:
            raise UnsafeArtifactError(
                f"{mv.ref} is a pickle; loading it runs its code. Set RENDEZVOUS_ALLOW_PICKLE=1 "
                "if you trust it"
            )
        sig = msgspec.convert(mv.signature, Signature)
        return flavors.get(mv.flavor).load(data, mv.flavor_meta, sig, allow_pickle=allow)

    # -- aliases ------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int | None, *,
                  by: str | None = None) -> AliasChange:
        """Point ``name@alias`` at ``version`` (None deletes it); the change is kept in history."""
        check_name(alias, "alias")
        if alias.isdigit():
            raise ConfigError(f"alias {alias!r} would be read as a version; use a name")
        if version is not None:
            self.store.get_version(name, version)
        return self.store.set_alias(name, alias, version, by or _user())

    def alias_history(self, name: str) -> list[AliasChange]:
        return self.store.alias_history(name)

    # -- deployments --------------------------------------------------------------------------

    def apply_policy(self, deployment: str, policy: Policy, *, by: str | None = None,
                     action: str = "apply", note: str = "") -> PolicyRecord:
        """Record ``policy`` as the deployment's new current version (all models must exist)."""
        check_name(deployment, "deployment name")
        models = []
        for spec in policy.models:
            r = self.resolve(spec.model)
            models.append(msgspec.structs.replace(spec, model=str(r)))
        resolved = msgspec.structs.replace(policy, models=models).validate()
        self._check_signatures(deployment, resolved)
        return self.store.add_policy(deployment, msgspec.to_builtins(resolved), action=action,
                                     by=by or _user(), note=note)

    def _check_signatures(self, deployment: str, policy: Policy) -> None:
        sigs = {m.model: self.signature(m.model) for m in policy.models}
        first = policy.champion or next(iter(sigs))
        for ref, sig in sigs.items():
            if sig.names != sigs[first].names:
                raise ConfigError(
                    f"deployment {deployment!r}: {ref} takes inputs {sig.names} but {first} "
                    f"takes {sigs[first].names}; every model of a deployment scores the same "
                    "inputs"
                )

    def policy(self, deployment: str, version: int | None = None) -> tuple[Policy, PolicyRecord]:
        rec = self.store.policy(deployment, version)
        return msgspec.convert(rec.body, Policy), rec

    def deployment_signature(self, deployment: str) -> Signature:
        pol, _ = self.policy(deployment)
        return self.signature(pol.champion or pol.models[0].model)

    def promote(self, deployment: str, model: str, *, by: str | None = None) -> PolicyRecord:
        """Make ``model`` the champion; the old champion keeps scoring as a challenger."""
        pol, _ = self.policy(deployment)
        new = promote(pol, str(self.resolve(model)))
        return self.apply_policy(deployment, new, by=by, action="promote",
                                 note=f"promote {new.champion} (was {pol.champion})")

    def rollback(self, deployment: str, *, by: str | None = None) -> PolicyRecord:
        """Restore the policy that the current one replaced."""
        _, rec = self.policy(deployment)
        if rec.parent is None:
            raise ConfigError(
                f"deployment {deployment!r} is at its first policy (version {rec.version}); "
                "there is nothing to roll back to"
            )
        prev = self.store.policy(deployment, rec.parent)
        return self.store.add_policy(
            deployment, prev.body, action="rollback", by=by or _user(), parent=prev.parent,
            note=f"rollback to policy {prev.version} (from {rec.version})",
        )

    def policy_history(self, deployment: str) -> list[PolicyRecord]:
        self.store.policy(deployment)
        return self.store.policy_history(deployment)

    def deployments(self) -> list[str]:
        return self.store.deployment_names()
