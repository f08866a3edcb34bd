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

import datetime as dt
import getpass
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from rendezvous import config
from rendezvous.core.policy import Policy, promote
from rendezvous.core.schema import Signature, example_columns, infer_signature
from rendezvous.errors import ConfigError, ConflictError, NotFoundError, UnsafeArtifactError
from rendezvous.flavors import base as flavors
from rendezvous.flavors.base import Predictor
from rendezvous.ids import ModelRef, check_name
from rendezvous.registry import lineage
from rendezvous.registry.artifacts import ArtifactStore, LocalArtifacts, open_store
from rendezvous.registry.reference import drift_reference
from rendezvous.registry.store import AliasChange, ModelVersion, PolicyRecord, SqlStore

__all__ = ["AliasChange", "ModelVersion", "PolicyRecord", "Registry", "registry_url"]

# SQLAlchemy URL scheme -> what it means; anything else is refused naming these.
_SCHEMES = {
    "sqlite": "sqlite:///PATH (a local file)",
    "postgresql+psycopg": "postgresql://USER@HOST:PORT/DB (psycopg 3; the [postgres] extra)",
}


def registry_url(url: str | None, home: Path) -> str:
    """The SQLAlchemy URL of the registry: ``url``, else ``RENDEZVOUS_REGISTRY``, else the
    SQLite file in ``home``. ``postgresql://`` means psycopg 3.

    >>> registry_url("postgresql://postgres@127.0.0.1/test", Path("/h"))
    'postgresql+psycopg://postgres@127.0.0.1/test'
    """
    text = url or config.REGISTRY.get() or f"sqlite:///{home / 'registry.db'}"
    scheme, sep, rest = text.partition("://")
    if scheme in ("postgresql", "postgres"):
        scheme = "postgresql+psycopg"
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(f"registry URL {text!r} is not one this registry knows; use "
                          + " or ".join(_SCHEMES.values()))
    return f"{scheme}://{rest}"


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _since(value: float | str | dt.date | None) -> float | None:
    """A timestamp from seconds, a date/datetime, or ISO text (local time when naive)."""
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"invalid date {value!r}: write YYYY-MM-DD or "
                              "YYYY-MM-DDTHH:MM[:SS]") from None
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    return value.timestamp()


def _like(glob: str) -> str:
    """A shell glob (``*``, ``?``) as a SQL LIKE pattern escaped with backslash."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


class Registry:
    """Models, versions, aliases and deployments under one data directory (or SQL URL).

    ``url``: the metadata database (default ``RENDEZVOUS_REGISTRY``, else
    ``<home>/registry.db``); ``artifacts``: where new artifacts go, a path or fsspec URL
    (default ``RENDEZVOUS_ARTIFACTS``, else ``<home>/artifacts``). Each version records where
    its artifact is, so loading needs no setting.
    """

    def __init__(self, home: Path | str | None = None, *, url: str | None = None,
                 artifacts: str | None = None) -> None:
        self.home = config.home(home)
        self.url = url  # None: RENDEZVOUS_REGISTRY, else the SQLite file under home
        self.store = SqlStore(registry_url(url, self.home))
        self._local = LocalArtifacts(self.home / "artifacts")
        location = artifacts or config.ARTIFACTS.get()
        try:
            self.artifacts: ArtifactStore = open_store(location) if location else self._local
        except BaseException:
            self.store.dispose()
            raise
        self._stores: dict[str, ArtifactStore] = {}

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
        created_by: str | None = None, parent: str | None = None, run: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        """Register a new version of model ``name``; its signature comes from ``example``
        (training data) unless given. Lineage: ``params`` (default: the model's own
        hyper-parameters), ``metrics``, ``parent`` (``name@N`` it was derived from), ``run``
        (an external run reference), the caller's git commit unless ``code_version`` is given,
        and the library versions. Returns the new version (``.ref`` is ``name@N``)."""
        check_name(name, "model name")
        fl = flavors.get(flavor) if flavor else flavors.for_model(model)
        data, meta = fl.save(model)
        return self._add(name, fl.name, data, meta, example=example, signature=signature,
                         params=lineage.model_params(model) if params is None else params,
                         metrics=metrics, description=description, code_version=code_version,
                         created_by=created_by, parent=parent, run=run, tags=tags)

    def register_file(
        self, name: str, path: Path | str, *, flavor: str | None = None, example: Any = None,
        signature: Signature | None = None, description: str = "", trust: Sequence[str] = (),
        params: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
        parent: str | None = None, run: str = "", tags: Mapping[str, str] | None = None,
        code_version: str = "",
    ) -> ModelVersion:
        """Register a saved model file: ``.skops`` (scikit-learn), ``.json``/``.ubj``
        (XGBoost), ``.txt`` (LightGBM), ``.onnx``, or ``.pkl``/``.joblib`` behind
        ``RENDEZVOUS_ALLOW_PICKLE``; the flavor comes from the file unless given. The file is
        inspected without running code from it; ``trust`` names extra skops types to allow
        (recorded with the version). The inputs come from ``signature``, ``example`` or what
        the model file declares."""
        check_name(name, "model name")
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read model file {path}: {exc.strerror}") from None
        fl = flavors.file_flavor(flavor) if flavor else flavors.for_file(path, data)
        info = fl.inspect(data, trust=trust)
        if signature is None and example is None:
            signature = info.signature()
            if signature is None:
                raise ConfigError(
                    f"cannot tell the inputs of {path}: pass --example DATA (CSV or Parquet "
                    "training rows) or --columns a,b,c"
                )
        return self._add(name, fl.name, data, info.meta, example=example, signature=signature,
                         params={**info.params, **(params or {})}, metrics=metrics,
                         description=description, parent=parent, run=run, tags=tags,
                         code_version=code_version)

    def _add(self, name: str, flavor: str, data: bytes, meta: dict[str, Any], *, example: Any,
             signature: Signature | None, params: dict[str, Any] | None = None,
             metrics: dict[str, Any] | None = None, description: str = "",
             code_version: str = "", created_by: str | None = None,
             parent: str | None = None, run: str = "",
             tags: Mapping[str, str] | None = None) -> ModelVersion:
        if signature is None:
            if example is None:
                raise ConfigError(
                    f"model {name!r} needs a signature: pass example=<training data> or "
                    "signature=Signature(...)"
                )
            signature = infer_signature(example)
        fingerprint, summary = lineage.fingerprint(example)
        if example is not None:
            # A few training rows: model hosts warm the model up on them before it serves.
            summary["example_rows"] = example_columns(example, signature)
            summary["reference"] = drift_reference(example, signature, flavor, data, meta)
        parent_ref = str(self.resolve(parent)) if parent else None
        dirty: bool | None = None
        if not code_version:
            code_version, dirty = lineage.git_version()
        digest = self.artifacts.put(data)
        mv = self.store.add_version(
            name=name, flavor=flavor, digest=digest, flavor_meta=meta,
            signature=msgspec.to_builtins(signature), params=lineage.json_safe(params or {}),
            metrics=lineage.json_safe(metrics or {}), data_fingerprint=fingerprint,
            data_summary=lineage.json_safe(summary),
            code_version=code_version, code_dirty=dirty, environment=lineage.environment(),
            description=description, created_by=created_by or current_user(), parent=parent_ref,
            run_ref=run, artifact_uri=None if self.artifacts is self._local
            else self.artifacts.url,
        )
        if tags:
            self.store.set_tags(name, mv.version, dict(tags))
        return mv

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

    def search(self, *, name: str | None = None, tags: Mapping[str, str] | None = None,
               since: float | str | dt.date | None = None,
               flavor: str | None = None) -> list[ModelVersion]:
        """Versions matching every filter: ``name`` a glob (``fraud-*``), ``tags`` set on the
        version or its model, created at or after ``since`` (a date, ISO text or timestamp),
        ``flavor``.

        >>> reg.search(name="cl*", tags={"team": "risk"}, since="2024-01-01")  # doctest: +SKIP
        """
        if flavor is not None:
            flavors.get(flavor)  # an unknown flavor is a typo, not an empty result
        return self.store.search(name_like=None if name is None else _like(name),
                                 tags=tags, since=_since(since), flavor=flavor)

    def _target(self, ref: str) -> tuple[str, int]:
        """``NAME`` -> (name, 0) for the model; ``NAME@V``/``NAME@ALIAS`` -> the version."""
        if "@" not in ref:
            check_name(ref, "model name")
            if not self.store.versions(ref):
                raise NotFoundError("model", ref, "register it first with "
                                    "`rendezvous models register`")
            return ref, 0
        r = self.resolve(ref)
        return r.name, r.version  # type: ignore[return-value]

    def tag(self, ref: str, tags: Mapping[str, str] | None = None,
            delete: Sequence[str] = ()) -> dict[str, str]:
        """Set and delete tags on a model (``NAME``) or a version (``NAME@V``); returns its
        tags after the change."""
        for key in [*(tags or {}), *delete]:
            check_name(key, "tag key")
        name, version = self._target(ref)
        return self.store.set_tags(name, version, dict(tags or {}), tuple(delete))

    def tags(self, ref: str) -> dict[str, str]:
        """A version's tags over its model's (``NAME@V``), or the model's own (``NAME``)."""
        name, version = self._target(ref)
        own = self.store.tags(name, version)
        return own if version == 0 else {**self.store.tags(name, 0), **own}

    def describe(self, ref: str, text: str) -> ModelVersion:
        """Replace a version's description."""
        r = self.resolve(ref)
        self.store.set_description(r.name, r.version, text)  # type: ignore[arg-type]
        return self.get(r)

    def card(self, ref: str, *, fmt: str = "md") -> str:
        """The model card of a version as Markdown (``fmt="md"``) or HTML (``"html"``)."""
        from rendezvous.registry import cards

        return cards.render(self, self.get(ref), fmt=fmt)

    def signature(self, ref: str | ModelRef) -> Signature:
        return msgspec.convert(self.get(ref).signature, Signature)

    def load(self, ref: str | ModelRef, *, allow_pickle: bool | None = None) -> Predictor:
        """Load a version for prediction; its artifact digest is verified first."""
        mv = self.get(ref)
        data = self._store_of(mv).get(mv.digest)  # raises on a digest mismatch
        allow = config.ALLOW_PICKLE.get(allow_pickle)
        if mv.flavor_meta.get("pickle") and not allow:
            raise UnsafeArtifactError(
                f"{mv.ref} is a pickle; loading it runs its code. Set RENDEZVOUS_ALLOW_PICKLE=1 "
                "if you trust it"
            )
        sig = msgspec.convert(mv.signature, Signature)
        return flavors.get(mv.flavor).load(data, mv.flavor_meta, sig, allow_pickle=allow)

    def _store_of(self, mv: ModelVersion) -> ArtifactStore:
        if mv.artifact_uri is None:
            return self._local
        if mv.artifact_uri == self.artifacts.url:
            return self.artifacts
        if mv.artifact_uri not in self._stores:
            self._stores[mv.artifact_uri] = open_store(mv.artifact_uri)
        return self._stores[mv.artifact_uri]

    # -- aliases ------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int | None, *,
                  by: str | None = None) -> AliasChange:
        """Point ``name@alias`` at ``version`` (None deletes it); the change is kept in history."""
        check_name(alias, "alias")
        if alias.isdigit():
            raise ConfigError(f"alias {alias!r} would be read as a version; use a name")
        if version is not None:
            self.store.get_version(name, version)
        return self.store.set_alias(name, alias, version, by or current_user())

    def alias_history(self, name: str) -> list[AliasChange]:
        return self.store.alias_history(name)

    # -- deployments --------------------------------------------------------------------------

    def apply_policy(self, deployment: str, policy: Policy, *, by: str | None = None,
                     action: str = "apply", note: str = "",
                     expect_current: int | None = None,
                     evidence: dict[str, Any] | None = None) -> PolicyRecord:
        """Record ``policy`` as the deployment's new current version (all models must exist);
        ``evidence`` (JSON) is kept with the record."""
        resolved = self.resolve_policy(deployment, policy)
        return self.store.add_policy(deployment, msgspec.to_builtins(resolved), action=action,
                                     by=by or current_user(), note=note,
                                     expect_current=expect_current, evidence=evidence)

    def resolve_policy(self, deployment: str, policy: Policy) -> Policy:
        """``policy`` with aliases resolved to versions, validated, signatures checked."""
        check_name(deployment, "deployment name")
        models = []
        for spec in policy.models:
            r = self.resolve(spec.model)
            models.append(msgspec.structs.replace(spec, model=str(r)))
        resolved = msgspec.structs.replace(policy, models=models).validate()
        self._check_signatures(deployment, resolved)
        return resolved

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

    def promote(self, deployment: str, model: str, *, by: str | None = None,
                evidence: dict[str, Any] | None = None,
                expect_current: int | None = None) -> PolicyRecord:
        """Make ``model`` the champion; the old champion keeps scoring as a challenger. The
        promotion gates are not checked here (``rendezvous.deploy.promote`` checks them):
        ``evidence`` is what they showed. ``expect_current``: the policy version the caller
        judged (a ``ConflictError`` if it changed meanwhile)."""
        pol, rec = self.policy(deployment)
        if expect_current is not None and rec.version != expect_current:
            raise ConflictError(
                f"deployment {deployment!r} changed meanwhile (policy {expect_current} is now "
                f"{rec.version}); look at `rendezvous deploy history {deployment}` and retry")
        new = promote(pol, str(self.resolve(model)))
        return self.apply_policy(deployment, new, by=by, action="promote",
                                 note=f"promote {new.champion} (was {pol.champion})",
                                 expect_current=rec.version, evidence=evidence)

    def rollback(self, deployment: str, *, by: str | None = None, action: str = "rollback",
                 note: str = "", evidence: dict[str, Any] | None = None,
                 expect_current: int | None = None) -> PolicyRecord:
        """Restore the policy that the current one replaced. ``expect_current``: roll back
        only from that policy version (a ``ConflictError`` if it changed meanwhile), so that
        of several processes that decide the same rollback, one records it."""
        _, rec = self.policy(deployment)
        if expect_current is not None and rec.version != expect_current:
            raise ConflictError(
                f"deployment {deployment!r} is at policy {rec.version}, not {expect_current}; "
                "it changed meanwhile, nothing was rolled back")
        if rec.parent is None:
            raise ConfigError(
                f"deployment {deployment!r} is at its first policy (version {rec.version}); "
                "there is nothing to roll back to"
            )
        prev = self.store.policy(deployment, rec.parent)
        what = f"rollback to policy {prev.version} (from {rec.version})"
        return self.store.add_policy(
            deployment, prev.body, action=action, by=by or current_user(), parent=prev.parent,
            note=f"{what}: {note}" if note else what, expect_current=rec.version,
            evidence=evidence,
        )

    def policy_history(self, deployment: str) -> list[PolicyRecord]:
        self.store.policy(deployment)
        return self.store.policy_history(deployment)

    def deployments(self) -> list[str]:
        return self.store.deployment_names()
