"""Isolation benchmark: does a neighbour model slow or stop the champion?

A trivial numpy champion (deadline 100 ms, champion ``wait_ms`` 50) is served alone, beside a
challenger that computes in pure Python for 20 ms per batch (holding the GIL), and beside a
challenger that calls ``abort()`` on every 50th batch, each neighbour hosted both ways
(``isolation = "process"``, the default, and ``"thread"``). Every scenario is a fresh
``rendezvous serve`` on this machine, in one run: c=1 (sequential requests, client-side
latency) and c=32 (wrk). It also serves the champion alone on ``--streams local-nats`` to
compare the NATS engine's c=1 latency with the embedded one's.

Usage::

    python -m bench.isolation                 # 300 requests at c=1, 10 s at c=32
    python -m bench.isolation --requests 100 --duration 3 --out /tmp/iso

Writes ``isolation.json``, ``isolation.md`` and ``isolation.png`` (with matplotlib) under
``--out`` (default ``bench/results/isolation``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen
from bench.machine import machine_info
from bench.report import write_results
from bench.server import free_port

ROOT = Path(__file__).resolve().parent.parent
RENDEZVOUS = Path(sys.executable).with_name("rendezvous")
READY_TIMEOUT_S = 180.0
BODY = {"x": 0.5, "y": -1.25}


@dataclass(frozen=True)
class Scenario:
    name: str
    neighbour: str | None = None  # import reference of the challenger's factory
    kwargs: tuple[tuple[str, Any], ...] = ()
    isolation: str = "process"
    streams: str = "embedded"


SCENARIOS = [
    Scenario("alone"),
    Scenario("GIL-heavy neighbour (process)", "bench.isolation_models:make_busy",
             (("busy_ms", 20.0),)),
    Scenario("GIL-heavy neighbour (thread)", "bench.isolation_models:make_busy",
             (("busy_ms", 20.0),), isolation="thread"),
    Scenario("crashing neighbour (process)", "bench.isolation_models:make_aborting",
             (("every", 50),)),
    Scenario("crashing neighbour (thread)", "bench.isolation_models:make_aborting",
             (("every", 50),), isolation="thread"),
    Scenario("alone on local-nats", streams="local-nats"),
]


TRUSTED = {"RENDEZVOUS_TRUSTED_MODULES": "bench"}  # the callables live in bench/


def setup(home: Path, sc: Scenario) -> None:
    """Register the models and the deployment (in the project's own environment)."""
    os.environ.update(TRUSTED)
    from rendezvous import CallableModel, Column, Datatype, ModelSpec, Policy, Registry, Role
    from rendezvous.core.policy import Isolation

    sig_cols = (Column("x", Datatype.FP64), Column("y", Datatype.FP64))
    from rendezvous import Signature

    sig = Signature(sig_cols)
    with Registry(home) as reg:
        champ = reg.register("champ", CallableModel("bench.isolation_models:trivial"),
                             signature=sig).ref
        models = [ModelSpec(champ, Role.CHAMPION, wait_ms=50)]
        if sc.neighbour:
            nb = reg.register("neighbour", CallableModel(sc.neighbour, **dict(sc.kwargs)),
                              signature=sig).ref
            models.append(ModelSpec(nb, Role.CHALLENGER, isolation=Isolation(sc.isolation)))
        reg.apply_policy("dep", Policy(deadline_ms=100, models=models))


def start(home: Path, port: int, sc: Scenario, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **TRUSTED, "PYTHONPATH": str(ROOT), "RENDEZVOUS_HOME": str(home)}
    argv = [str(RENDEZVOUS), "serve", "dep", "--port", str(port), "--streams", sc.streams]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited during start-up; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code \
                    == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S:g} s; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sequential(url: str, n: int) -> dict[str, Any]:
    """``n`` requests one after another: latency of each answer, failures, who answered."""
    lat: list[float] = []
    failed = champion = 0
    why: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=5) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                r = client.post("/v1/deployments/dep/predict", json=[BODY])
            except httpx.HTTPError as exc:
                failed += 1
                why[type(exc).__name__] = why.get(type(exc).__name__, 0) + 1
                continue
            if r.status_code != 200:
                failed += 1
                why[str(r.status_code)] = why.get(str(r.status_code), 0) + 1
                continue
            lat.append((time.perf_counter() - t0) * 1000)
            champion += r.json().get("model") == "champ@1"
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"c1_p50_ms": round(statistics.median(lat), 2) if lat else None,
            "c1_p99_ms": round(q[98], 2) if lat else None, "c1_failed": failed,
            "c1_failures": why,
            "c1_champion": champion, "c1_requests": n}


def restarts(url: str) -> int | None:
    try:
        status = httpx.get(f"{url}/v1/deployments/dep/status", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    states = status.get("model_states", {})
    return states.get("neighbour@1", {}).get("restarts") if states else None


def run_one(sc: Scenario, *, requests: int, duration_s: float, work: Path) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="iso-", dir=work))
    setup(home, sc)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(home, port, sc, work / f"{home.name}.log")
    row: dict[str, Any] = {"scenario": sc.name, **asdict(sc)}
    try:
        sequential(url, 20)  # let connections and caches settle
        row.update(sequential(url, requests))
        row["c1_server_died"] = proc.poll() is not None
        if proc.poll() is None:
            bodies = loadgen.write_bodies(work / "bodies.txt", [json.dumps([BODY]).encode()])
            res = loadgen.run_wrk(f"{url}/v1/deployments/dep/predict", bodies,
                                  connections=32, duration_s=duration_s)
            row.update(c32_rps=round(res.rps, 1), c32_p50_ms=round(res.p50_ms, 2),
                       c32_p99_ms=round(res.p99_ms, 2), c32_errors=res.errors)
        row["restarts"] = restarts(url)
        row["server_died"] = proc.poll() is not None
    finally:
        stop(proc)
    return row


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["results"]
    cols = ["scenario", "c1_p50_ms", "c1_p99_ms", "c1_failed", "c1_failures", "c1_champion",
            "c32_rps",
            "c32_p50_ms", "c32_p99_ms", "c32_errors", "restarts", "server_died"]
    out = ["# Isolation benchmark", "", f"Machine: {doc['machine']}", "",
           f"Command: `{doc['command']}`", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows]
    alone = next((r for r in rows if r["scenario"] == "alone"), None)
    if alone is None:
        return "\n".join(out) + "\n"
    out += ["", "Champion c=1 p50 against the champion alone on the embedded engine (goal: "
                "moves < 1 ms, no failed request):", ""]
    for r in rows:
        if r is not alone and r.get("c1_p50_ms") is not None and alone.get("c1_p50_ms") \
                is not None:
            delta = r["c1_p50_ms"] - alone["c1_p50_ms"]
            out.append(f"- {r['scenario']}: {delta:+.2f} ms, {r['c1_failed']} of "
                       f"{r['c1_requests']} failed"
                       + (", the server died" if r.get("server_died") else ""))
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["scenario"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4.2), constrained_layout=True)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.get("c1_p50_ms") or 0 for r in rows], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [r.get("c1_p99_ms") or 0 for r in rows], 0.4, label="p99")
    for x, r in zip(xs, rows, strict=True):
        if r.get("c1_failed"):
            ax.annotate(f"{r['c1_failed']} failed", (x, 1), ha="center", color="red")
    ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize="small")
    ax.set_ylabel("champion latency at c=1, ms")
    ax.set_title("The champion beside a neighbour model")
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--scenarios", default="", help="comma-separated names (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "isolation")
    args = p.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios.split(",")]
    loadgen.ensure_wrk()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rv-isolation-") as tmp:
        for sc in chosen:
            print(f"{sc.name} …", flush=True)
            rows.append(run_one(sc, requests=args.requests, duration_s=args.duration,
                                work=Path(tmp)))
            print(f"  {rows[-1]}", flush=True)
    doc = {"machine": machine_info([]), "command": "python -m bench.isolation "
           + " ".join(argv if argv is not None else sys.argv[1:]), "results": rows}
    write_results(args.out, "isolation", doc, markdown(doc), lambda p: plot(rows, p))
    print(markdown(doc))


if __name__ == "__main__":
    main()
