"""Import MLflow models: a local model directory, or ``models:/…`` / ``runs:/…`` from a tracking
server.

Reads ``MLmodel`` (YAML, parsed safely), takes the signature and input example, and maps the
first flavor that loads without running code: ``onnx``, ``xgboost``, ``lightgbm`` (text
models), ``sklearn`` saved with skops. Pickled models (``sklearn`` with pickle or cloudpickle,
``lightgbm`` scikit-learn wrappers) are registered through the ``pickle`` flavor only with
``RENDEZVOUS_ALLOW_PICKLE=1``; a model that only has a ``python_function`` loader module is
refused (its loader runs the model's own code). The MLflow run id becomes the version's run
reference. Downloading ``models:/`` and ``runs:/`` needs ``pip install 'rendezvous-ml[mlflow]'``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rendezvous import config
from rendezvous.core.schema import Column, Datatype, Signature, _datatype_of
from rendezvous.errors import ConfigError, FlavorError, UnsafeArtifactError
from rendezvous.flavors.base import require
from rendezvous.flavors.pickled import REFUSED

if TYPE_CHECKING:
    from rendezvous.registry import ModelVersion, Registry

_COLSPEC = {"double": Datatype.FP64, "float": Datatype.FP32, "long": Datatype.INT64,
            "integer": Datatype.INT32, "boolean": Datatype.BOOL, "string": Datatype.BYTES,
            "binary": Datatype.BYTES}
_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*:/")


@dataclass(frozen=True)
class Mapped:
    """How one MLflow model becomes one registration."""

    flavor: str  # ours
    file: Path
    mlflow_flavor: str


def read_mlmodel(model_dir: Path) -> dict[str, Any]:
    import yaml

    path = model_dir / "MLmodel"
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not an MLflow model directory (no MLmodel file); "
                          "give the directory that `mlflow.<flavor>.save_model` wrote")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise ConfigError(f"{path} has no 'flavors' section; is it an MLflow model?")
    return doc


def map_flavor(model_dir: Path, flavors: dict[str, Any]) -> Mapped:
    """The safe flavor to register, or a refusal saying why."""
    if "onnx" in flavors:
        return Mapped("onnx", model_dir / flavors["onnx"].get("data", "model.onnx"), "onnx")
    if "xgboost" in flavors:
        return Mapped("xgboost", model_dir / flavors["xgboost"]["data"], "xgboost")
    if "lightgbm" in flavors:
        data = model_dir / flavors["lightgbm"]["data"]
        if data.suffix == ".skops":  # scikit-learn wrappers; their lightgbm types need --trust
            return Mapped("sklearn", data, "lightgbm")
        if data.suffix != ".pkl":
            return Mapped("lightgbm", data, "lightgbm")
        return _pickled(data, "lightgbm", "a pickled scikit-learn LightGBM wrapper")
    if "sklearn" in flavors:
        sk = flavors["sklearn"]
        data = model_dir / sk["pickled_model"]
        fmt = sk.get("serialization_format", "pickle")
        if fmt == "skops" or data.suffix == ".skops":
            return Mapped("sklearn", data, "sklearn")
        return _pickled(data, "sklearn", f"saved with {fmt}")
    loader = flavors.get("python_function", {}).get("loader_module", "?")
    raise UnsafeArtifactError(
        f"the MLflow model has no flavor Rendezvous loads safely ({', '.join(flavors)}); its "
        f"python_function loader module {loader!r} runs the model's own code. Export it as "
        "ONNX, XGBoost, LightGBM or skops, or serve its code as a python callable from a "
        "module in RENDEZVOUS_TRUSTED_MODULES"
    )


def _pickled(data: Path, mlflow_flavor: str, why: str) -> Mapped:
    if not config.ALLOW_PICKLE.get():
        raise UnsafeArtifactError(f"the MLflow {mlflow_flavor} model ({why}) {REFUSED}")
    return Mapped("pickle", data, mlflow_flavor)


def signature_of(doc: dict[str, Any]) -> Signature | None:
    """Our signature from MLflow's (column-based or a single 2-D tensor)."""
    raw = (doc.get("signature") or {}).get("inputs")
    if not raw:
        return None
    specs = json.loads(raw) if isinstance(raw, str) else raw
    if len(specs) == 1 and specs[0].get("type") == "tensor":
        spec = specs[0]["tensor-spec"]
        shape = spec.get("shape", [])
        if len(shape) != 2 or shape[1] < 1:
            raise FlavorError(f"MLflow tensor input of shape {shape} is not rows x features; "
                              "register the model file with --example instead")
        dt = _datatype_of(np.dtype(spec["dtype"]))
        return Signature(tuple(Column(f"f{i}", dt) for i in range(shape[1])))
    cols = []
    for i, spec in enumerate(specs):
        kind = spec.get("type")
        if kind not in _COLSPEC:
            raise FlavorError(f"MLflow input {spec.get('name', i)!r} has type {kind!r}; "
                              f"supported: {', '.join(_COLSPEC)}")
        cols.append(Column(str(spec.get("name", f"f{i}")), _COLSPEC[kind]))
    return Signature(tuple(cols))


def input_example(model_dir: Path, doc: dict[str, Any], sig: Signature | None) -> Any:
    """The saved input example as columns or a 2-D array, or None."""
    info = doc.get("saved_input_example_info") or {}
    path = model_dir / info.get("artifact_path", "input_example.json")
    if not path.is_file():
        return None
    ex = json.loads(path.read_text())
    if isinstance(ex, dict) and "columns" in ex and "data" in ex:
        rows = np.array(ex["data"], dtype=object)
        return {str(c): np.array(rows[:, i].tolist()) for i, c in enumerate(ex["columns"])}
    if isinstance(ex, dict) and "inputs" in ex:
        ex = ex["inputs"]
    if isinstance(ex, dict):
        return {str(k): np.asarray(v) for k, v in ex.items()}
    arr = np.asarray(ex)
    if arr.ndim == 2 and sig is not None and arr.shape[1] == len(sig.inputs):
        return {c.name: arr[:, i].astype(np.dtype(sig.numpy_dtype(c.name)))
                for i, c in enumerate(sig.inputs)}
    return arr if arr.ndim == 2 else None


def _download(source: str, tracking_uri: str | None, dst: Path) -> Path:
    mlflow = require("mlflow", f"importing {source.split(':', 1)[0]}:/ models", "mlflow")
    try:
        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, tracking_uri=tracking_uri, dst_path=str(dst)))
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(f"cannot fetch {source} from MLflow "
                          f"({tracking_uri or 'MLFLOW_TRACKING_URI'}): {exc.message}") from None


def _run_data(run_id: str, tracking_uri: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's parameters and metrics, when a tracking server was given."""
    mlflow = require("mlflow", "reading MLflow runs", "mlflow")
    try:
        run = mlflow.tracking.MlflowClient(tracking_uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return {}, {}
    return dict(run.data.params), dict(run.data.metrics)


def _default_name(source: str, model_dir: Path) -> str:
    if source.startswith("models:/"):
        return source.removeprefix("models:/").split("/")[0].split("@")[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", model_dir.name).strip("-.") or "model"


def import_model(reg: Registry, source: str, *, name: str | None = None,
                 tracking_uri: str | None = None, description: str = "",
                 trust: Sequence[str] = ()) -> ModelVersion:
    """Register the MLflow model at ``source`` as a new version of ``name``; ``trust`` names
    extra skops types (e.g. a LightGBM scikit-learn wrapper's) as for ``register_file``.

    >>> import_model(reg, "models:/fraud/3", tracking_uri="http://mlflow:5000")  # doctest: +SKIP
    """
    remote = bool(_REMOTE.match(source)) and not source.startswith("file:")
    with tempfile.TemporaryDirectory(prefix="rendezvous-mlflow-") as tmp:
        if remote:
            model_dir = _download(source, tracking_uri, Path(tmp))
        else:
            model_dir = Path(source.removeprefix("file://")).expanduser()
        doc = read_mlmodel(model_dir)
        mapped = map_flavor(model_dir, doc["flavors"])
        if not mapped.file.is_file():
            raise ConfigError(f"MLmodel names {mapped.file.name} for its {mapped.mlflow_flavor} "
                              f"flavor, but {mapped.file} is missing")
        sig = signature_of(doc)
        example = input_example(model_dir, doc, sig)
        run_id = doc.get("run_id")
        params: dict[str, Any] = {}
        metrics: dict[str, Any] = {}
        if run_id and remote:
            params, metrics = _run_data(str(run_id), tracking_uri)
        tags = {"mlflow_flavor": mapped.mlflow_flavor, "mlflow_source": source[:500]}
        return reg.register_file(
            name or _default_name(source, model_dir), mapped.file, flavor=mapped.flavor,
            signature=sig, example=example, description=description, trust=trust,
            run=f"mlflow:runs/{run_id}" if run_id else "", params=params, metrics=metrics,
            tags=tags)
