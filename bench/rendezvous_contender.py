"""The Rendezvous contenders, ``rendezvous-1`` and ``rendezvous-4``: everything the benchmark
knows about Rendezvous lives here, so the CLI calls and specs can change in one place.

Setup, all through the project's own environment (``.venv/bin``):

1. ``python -m bench.rendezvous_contender OUT_DIR`` trains the models and saves each with
   ``skops.io.dump`` (cached by ``bench.models.cached_build``);
2. ``rendezvous models register NAME PATH --home HOME`` for each model the deployment uses;
3. ``rendezvous deploy apply SPEC.toml --home HOME``;
4. ``rendezvous serve DEPLOYMENT --home HOME --port PORT``, ready when
   ``GET /v2/health/ready`` answers 200; requests are OIP v2 bodies, as MLServer's, to
   ``/v2/models/DEPLOYMENT/infer``.

Each contender gets a fresh home, so model versions always start at 1.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.models import cached_build, reference_split, train_reference
from bench.payloads import Wire
from bench.server import ServerError, ServerSpec, Workspace, free_port, run_step
from bench.venv import ROOT, project_bin


def _logistic(c: float) -> Callable[[Any], Any]:
    def train(split: Any) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=1000).fit(split.x_train, split.y_train)

    return train


def _challenger(split: Any) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=100, learning_rate=0.05, max_leaf_nodes=15, random_state=1
    ).fit(split.x_train, split.y_train)


#: Registered model name -> how to train it from the reference split.
MODELS: dict[str, Callable[[Any], Any]] = {
    "hgb": train_reference,  # the reference model, the same as every other contender's
    "hgb-fallback": _logistic(1.0),
    "hgb-challenger": _challenger,
    "hgb-canary": _logistic(0.1),
}

_CHAMPION = """\
[[models]]
model = "hgb@1"
role = "champion"
wait_ms = 100
"""

_OTHERS = """
[[models]]
model = "hgb-fallback@1"
role = "fallback"

[[models]]
model = "hgb-challenger@1"
role = "challenger"

[[models]]
model = "hgb-canary@1"
role = "canary"
"""

def _in_threads(spec: str) -> str:
    """The same models with ``isolation = "thread"`` (in the serving process)."""
    return spec.replace('role = "', 'isolation = "thread"\nrole = "')


#: Deployment name -> (models it needs, spec text).
DEPLOYMENTS: dict[str, tuple[list[str], str]] = {
    "bench1": (["hgb"], f'name = "bench1"\ndeadline_ms = 200\n\n{_CHAMPION}'),
    "bench4": (list(MODELS), f'name = "bench4"\ndeadline_ms = 200\n\n{_CHAMPION}{_OTHERS}'),
    "bench1t": (["hgb"], f'name = "bench1t"\ndeadline_ms = 200\n\n'
                         f'{_in_threads(_CHAMPION)}'),
    "bench4t": (list(MODELS), f'name = "bench4t"\ndeadline_ms = 200\n\n'
                              f'{_in_threads(_CHAMPION + _OTHERS)}'),
}


def serving_processes(deployment: str, workers: int) -> int:
    """``rendezvous serve --processes`` for ``deployment`` where every contender gets
    ``workers`` processes: that many, except for the four-model deployment with its models in
    model hosts, which gets half (at least one). Its model hosts and analytics host take the
    rest of the cores: on 2 cores, one serving process did 1.16x the throughput of two at
    c=32 with 0.72x the p99 and 0.70x the CPU per request, and 1.11x at c=1
    (``results/processes``, ``results/processes-c1``); the champion alone did more with two
    (0.91x and 0.96x the throughput with one, in two alternating pairs)."""
    return max(1, workers // 2) if deployment == "bench4" else workers


def _build_skops(out: Path) -> None:
    import skops.io

    split = reference_split()
    for name, train in MODELS.items():
        tmp = out / f"{name}.skops.tmp"
        skops.io.dump(train(split), tmp)
        tmp.replace(out / f"{name}.skops")


def _prepare(ws: Workspace, deployment: str,
             serve_args: list[str] | None = None) -> ServerSpec:
    python, cli = project_bin("python"), project_bin("rendezvous")
    if not cli.exists():
        raise ServerError(f"{cli} not found; install the project first (make test)")
    env = {"PYTHONPATH": str(ROOT), "RENDEZVOUS_HOST": "127.0.0.1"}
    models_dir = ws.dir / "models"
    run_step([python, "-m", "bench.rendezvous_contender", models_dir], cwd=ROOT, env=env)

    home = ws.dir / "home"
    shutil.rmtree(home, ignore_errors=True)
    needed, spec_text = DEPLOYMENTS[deployment]
    for name in needed:
        run_step([cli, "models", "register", name, models_dir / f"{name}.skops",
                  "--home", home], cwd=ws.dir, env=env)
    spec = ws.dir / f"{deployment}.toml"
    spec.write_text(spec_text)
    run_step([cli, "deploy", "apply", spec, "--home", home], cwd=ws.dir, env=env)

    return ServerSpec(
        argv=[str(cli), "serve", deployment, "--home", str(home), "--port", str(ws.port),
              # Serving processes for ``ws.workers`` (2 by default: one per core of the
              # reference machine), as the FastAPI baseline and MLflow get that many
              # workers; each is a whole Rendezvous on its own partition of the streams.
              *(["--processes", str(serving_processes(deployment, ws.workers))]
                if serve_args is None else serve_args)],
        ready_url=f"{ws.base_url}/v2/health/ready",
        infer_url=f"{ws.base_url}/v2/models/{deployment}/infer",
        wire=Wire.OIP_V2,
        cwd=ws.dir,
        env=env,
    )


def prepare_one(ws: Workspace) -> ServerSpec:
    """``rendezvous-1``: the champion alone."""
    return _prepare(ws, "bench1")


def prepare_one_mlflow(ws: Workspace) -> ServerSpec:
    """``rendezvous-1-mlflow``: ``rendezvous-1`` answering MLflow ``dataframe_split`` bodies on
    ``/v1/deployments/bench1/invocations`` (MLflow's scoring protocol)."""
    spec = _prepare(ws, "bench1")
    return dataclasses.replace(spec, infer_url=f"{ws.base_url}/v1/deployments/bench1/invocations",
                               wire=Wire.MLFLOW)


def prepare_one_grpc(ws: Workspace) -> ServerSpec:
    """``rendezvous-1-grpc``: ``rendezvous-1`` answering OIP v2 gRPC ``ModelInfer`` (raw
    tensor bytes) on its gRPC port (``RENDEZVOUS_GRPC_PORT``, shared by both processes)."""
    grpc_port = free_port()
    spec = _prepare(ws, "bench1")
    return dataclasses.replace(
        spec, infer_url=f"http://127.0.0.1:{grpc_port}/inference.GRPCInferenceService/ModelInfer",
        wire=Wire.OIP_GRPC, model="bench1",
        env={**spec.env, "RENDEZVOUS_GRPC_PORT": str(grpc_port)})


def prepare_four(ws: Workspace) -> ServerSpec:
    """``rendezvous-4``: champion, fallback, challenger and canary score every request."""
    return _prepare(ws, "bench4")


def prepare_four_without_analytics(ws: Workspace) -> ServerSpec:
    """``rendezvous-4-no-analytics``: ``rendezvous-4`` with ``RENDEZVOUS_ANALYTICS=0`` (no
    comparisons, drift, accuracy or score archive): what the analytics cost."""
    spec = _prepare(ws, "bench4")
    return dataclasses.replace(spec, env={**spec.env, "RENDEZVOUS_ANALYTICS": "0"})


def prepare_four_preempting(ws: Workspace) -> ServerSpec:
    """``rendezvous-4-preempting``: ``rendezvous-4`` with ``RENDEZVOUS_HOSTS_PREEMPT=1`` (model
    hosts under Linux's default policy, not SCHED_BATCH): what the host policy is worth."""
    spec = _prepare(ws, "bench4")
    return dataclasses.replace(spec, env={**spec.env, "RENDEZVOUS_HOSTS_PREEMPT": "1"})


def prepare_one_thread(ws: Workspace) -> ServerSpec:
    """``rendezvous-1-thread``: ``rendezvous-1`` with its model in the serving process."""
    return _prepare(ws, "bench1t")


def prepare_four_thread(ws: Workspace) -> ServerSpec:
    """``rendezvous-4-thread``: ``rendezvous-4`` with every model in the serving process."""
    return _prepare(ws, "bench4t")


def prepare_nats(replicas: int) -> Callable[[Workspace], ServerSpec]:
    """``rendezvous-nats-wN``: the four-model deployment with every role as its own process
    on a private nats-server (``serve --streams local-nats``), N worker processes per model."""

    def prepare(ws: Workspace) -> ServerSpec:
        with socket.socket() as probe:  # the monitor's status port
            probe.bind(("127.0.0.1", 0))
            monitor_port = probe.getsockname()[1]
        return _prepare(ws, "bench4", ["--streams", "local-nats", "--replicas", str(replicas),
                                       "--monitor-port", str(monitor_port)])

    return prepare


def main(argv: list[str]) -> int:
    """``python -m bench.rendezvous_contender OUT_DIR``: the skops files, in the project venv."""
    if len(argv) != 1:
        print("usage: python -m bench.rendezvous_contender OUT_DIR", file=sys.stderr)
        return 2
    cached_build(Path(argv[0]), "rendezvous-skops", _build_skops)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
