"""The contenders: how each one's artifact is built and its server started.

Each ``prepare_*`` gets a ``Workspace`` (its directory under ``bench/.work`` and a free
port), builds what it needs there and returns the ``ServerSpec`` that starts it on
127.0.0.1. The three third-party contenders run from ``bench/.venv``; the Rendezvous ones
from the project's environment (see ``bench.rendezvous_contender``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import rendezvous_contender
from bench.payloads import Wire
from bench.server import ServerSpec, Workspace, free_port, run_step
from bench.venv import BENCH, MLSERVER, ROOT, VirtualEnv

MLSERVER_MODEL = "hgb"


@dataclass(frozen=True)
class Contender:
    """One entry in the benchmark."""

    name: str
    prepare: Callable[[Workspace], ServerSpec]
    #: The benchmark venv it runs from; None for the project's own environment.
    venv: VirtualEnv | None
    summary: str


def _env(venv: VirtualEnv) -> dict[str, str]:
    # The venv's bin first: `mlflow models serve` starts `uvicorn` by name from PATH.
    return {
        "PATH": f"{venv.dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }


def _artifact(venv: VirtualEnv, kind: str, out: Path) -> Path:
    """Build (or reuse) the reference model as ``kind`` with the serving venv's scikit-learn."""
    run_step([venv.python, "-m", "bench.models", kind, out], cwd=ROOT, env=_env(venv))
    return out


def prepare_mlflow(ws: Workspace) -> ServerSpec:
    """``mlflow models serve --env-manager local`` with ``ws.workers`` workers (uvicorn)."""
    model = _artifact(BENCH, "mlflow", ws.dir / "artifact") / "model"
    return ServerSpec(
        argv=[str(BENCH.bin("mlflow")), "models", "serve", "-m", str(model),
              "--env-manager", "local", "-h", "127.0.0.1", "-p", str(ws.port),
              "-w", str(ws.workers)],
        ready_url=f"{ws.base_url}/ping",
        infer_url=f"{ws.base_url}/invocations",
        wire=Wire.MLFLOW,
        cwd=ws.dir,
        env=_env(BENCH),
    )


JsonDict = dict[str, object]


def mlserver_settings(ws: Workspace, model_path: Path) -> tuple[JsonDict, JsonDict]:
    """MLServer's settings.json and model-settings.json: adaptive batching at 64 / 2 ms, and
    ``ws.workers - 1`` inference workers beside the HTTP server (1, MLServer's default, for
    the default 2)."""
    settings: JsonDict = {
        "host": "127.0.0.1",
        "http_port": ws.port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": max(1, ws.workers - 1),
        # debug (the default) turns on one access-log line per request.
        "debug": False,
    }
    model: JsonDict = {
        "name": MLSERVER_MODEL,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": 64,
        "max_batch_time": 0.002,
        "parameters": {"uri": str(model_path), "version": "v1"},
    }
    return settings, model


def prepare_mlserver(ws: Workspace) -> ServerSpec:
    """``mlserver start`` on a repository holding the joblib model."""
    model_path = _artifact(MLSERVER, "joblib", ws.dir / "artifact") / "model.joblib"
    repo = ws.dir / "repo"
    (repo / MLSERVER_MODEL).mkdir(parents=True, exist_ok=True)
    settings, model = mlserver_settings(ws, model_path)
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    (repo / MLSERVER_MODEL / "model-settings.json").write_text(json.dumps(model, indent=2))
    return ServerSpec(
        argv=[str(MLSERVER.bin("mlserver")), "start", str(repo)],
        ready_url=f"{ws.base_url}/v2/models/{MLSERVER_MODEL}/ready",
        infer_url=f"{ws.base_url}/v2/models/{MLSERVER_MODEL}/infer",
        wire=Wire.OIP_V2,
        cwd=ws.dir,
        env=_env(MLSERVER),
    )


def _gunicorn(ws: Workspace, app: str, endpoint: str, env: dict[str, str]) -> ServerSpec:
    """gunicorn with ``ws.workers`` uvicorn workers serving the ASGI ``app`` (``module:attr``)."""
    return ServerSpec(
        argv=[str(BENCH.bin("gunicorn")), "-w", str(ws.workers),
              "-k", "uvicorn_worker.UvicornWorker", "-b", f"127.0.0.1:{ws.port}", app],
        ready_url=f"{ws.base_url}/health",
        infer_url=f"{ws.base_url}{endpoint}",
        wire=Wire.FASTAPI,
        cwd=ROOT,
        env={**_env(BENCH), **env},
    )


def prepare_fastapi(endpoint: str) -> Callable[[Workspace], ServerSpec]:
    """gunicorn, ``ws.workers`` uvicorn workers, serving ``bench.fastapi_app`` at ``endpoint``."""

    def prepare(ws: Workspace) -> ServerSpec:
        model_path = _artifact(BENCH, "joblib", ws.dir / "artifact") / "model.joblib"
        return _gunicorn(ws, "bench.fastapi_app:app", endpoint,
                         {"BENCH_MODEL_PATH": str(model_path)})

    return prepare


def prepare_floor(ws: Workspace) -> ServerSpec:
    """gunicorn, ``ws.workers`` uvicorn workers, serving ``bench.floor_app`` (no model, no
    framework)."""
    return _gunicorn(ws, "bench.floor_app:app", "/predict", {})


#: Every contender, in the order they run and appear in the results.
CONTENDERS: dict[str, Contender] = {c.name: c for c in [
    Contender("mlflow", prepare_mlflow, BENCH,
              "mlflow models serve --env-manager local, --workers uvicorn workers"),
    Contender("mlserver", prepare_mlserver, MLSERVER,
              "MLServer + mlserver-sklearn, adaptive batching 64 / 2 ms, --workers - 1 "
              "inference workers"),
    Contender("fastapi", prepare_fastapi("/predict"), BENCH,
              "plain FastAPI app (sync endpoint, as FastAPI's docs advise for blocking work), "
              "gunicorn with --workers uvicorn workers"),
    Contender("fastapi-async", prepare_fastapi("/predict-async"), BENCH,
              "the same app's async endpoint, predicting on the event loop; gunicorn with "
              "--workers uvicorn workers"),
    Contender("floor", prepare_floor, BENCH,
              "not a contender: a bare ASGI app that answers a constant without a model, "
              "gunicorn with --workers uvicorn workers; how far the HTTP stack alone goes here"),
    Contender("rendezvous-1", rendezvous_contender.prepare_one, None,
              "Rendezvous, champion only, decoy archive; serve --processes N (N = --workers)"),
    Contender("rendezvous-1-mlflow", rendezvous_contender.prepare_one_mlflow, None,
              "rendezvous-1 answering MLflow dataframe_split bodies on "
              "/v1/deployments/bench1/invocations"),
    Contender("rendezvous-1-grpc", rendezvous_contender.prepare_one_grpc, None,
              "rendezvous-1 answering OIP v2 gRPC ModelInfer (raw tensors) on "
              "RENDEZVOUS_GRPC_PORT, loaded by h2load"),
    Contender("rendezvous-4", rendezvous_contender.prepare_four, None,
              "Rendezvous, champion + fallback + challenger + canary, decoy archive; "
              "serve --processes N (N = --workers / 2, at least 1)"),
    Contender("rendezvous-4-no-analytics", rendezvous_contender.prepare_four_without_analytics,
              None, "rendezvous-4 with RENDEZVOUS_ANALYTICS=0"),
    Contender("rendezvous-4-preempting", rendezvous_contender.prepare_four_preempting, None,
              "rendezvous-4 with RENDEZVOUS_HOSTS_PREEMPT=1 (model hosts not SCHED_BATCH)"),
    Contender("rendezvous-1-thread", rendezvous_contender.prepare_one_thread, None,
              "rendezvous-1 with isolation = \"thread\" (the model in the serving process)"),
    Contender("rendezvous-4-thread", rendezvous_contender.prepare_four_thread, None,
              "rendezvous-4 with isolation = \"thread\" for every model"),
    *(Contender(f"rendezvous-nats-w{n}", rendezvous_contender.prepare_nats(n), None,
                f"Rendezvous, the 4-model deployment with every role its own process on "
                f"NATS JetStream (serve --streams local-nats), {n} worker process(es) per model")
      for n in (1, 2, 4)),
]}

#: What a plain run measures; the NATS scale-out contenders are asked for by name
#: (see bench/README.md).
DEFAULT_CONTENDERS = ["mlflow", "mlserver", "fastapi", "fastapi-async", "rendezvous-1",
                      "rendezvous-4"]


def select(names: list[str]) -> list[Contender]:
    """The named contenders in the given order; an unknown name's error lists the known ones."""
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        raise ValueError(f"unknown contender(s) {', '.join(unknown)}; "
                         f"known: {', '.join(CONTENDERS)}")
    return [CONTENDERS[n] for n in names]
