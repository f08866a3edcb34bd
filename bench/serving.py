"""Serving benchmark: MLflow, MLServer, a plain FastAPI app and Rendezvous, side by side.

Each contender is started as its own server on 127.0.0.1, warmed up, then loaded by wrk at
each concurrency level for a fixed duration; its process tree's RSS is sampled throughout.
Writes ``serving.json``, ``serving.md`` and ``serving.png`` to ``bench/results``.

Usage::

    python -m bench.serving                      # the five contenders, c = 1, 8, 32, 64
    python -m bench.serving --quick              # c = 1, 32, short runs (under 2 minutes)
    python -m bench.serving --contenders fastapi,rendezvous-1 --levels 1,8
    python -m bench.serving --workers 8 --wrk-threads 4 --levels 1,32,128   # more cores

The first run creates ``bench/.venv`` from ``bench/requirements.txt`` and re-executes itself
there; later runs reuse it. From Python (any environment with rich; the third-party
contenders still need ``bench/.venv``, which ``run`` creates on demand)::

    from bench.serving import run
    rows = run(["rendezvous-1"], [1, 8], duration_s=2, warmup_s=1, out_dir=tmp_path)
    assert all(r["errors"] == 0 for r in rows)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench import loadgen, models, payloads, report, venv
from bench.contenders import CONTENDERS, DEFAULT_CONTENDERS, Contender, select
from bench.loadgen import LoadError, LoadResult
from bench.machine import machine_info
from bench.payloads import Wire
from bench.server import (
    PeakRss,
    Server,
    ServerError,
    ServerSpec,
    Workspace,
    free_port,
    tree_cpu_s,
)

RESULTS_DIR = venv.BENCH_DIR / "results"
Row = dict[str, Any]
SETTLE_S = 0.5


@dataclass(frozen=True)
class Plan:
    """Levels and durations of one benchmark mode."""

    levels: list[int]
    duration_s: float
    warmup_s: float


FULL = Plan(levels=[1, 8, 32, 64], duration_s=20, warmup_s=5)
QUICK = Plan(levels=[1, 32], duration_s=3, warmup_s=2)


@dataclass(frozen=True)
class Scale:
    """How many processes every contender gets, and wrk's threads (2 and 1 suit 2 cores)."""

    workers: int = 2
    wrk_threads: int = loadgen.THREADS


def _row(contender: str, level: int, result: LoadResult, peak_rss: int,
         cpu_s: float | None) -> dict[str, Any]:
    """One result row; ``cpu_s``: what the server's process tree used during the level."""
    cpu_ms_per_req = cores_busy = None
    if cpu_s is not None and result.requests > 0 and result.duration_s > 0:
        cpu_ms_per_req = round(cpu_s * 1000 / result.requests, 3)
        cores_busy = round(cpu_s / result.duration_s, 2)
    return {
        "contender": contender,
        "concurrency": level,
        "rps": round(result.rps, 1),
        "p50_ms": round(result.p50_ms, 3),
        "p99_ms": round(result.p99_ms, 3),
        "p999_ms": round(result.p999_ms, 3),
        "errors": result.errors,
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        # Where the server runs out of cores (cores_busy near the machine's, less wrk's) more
        # concurrency cannot help; below that, its requests wait for something else.
        "cpu_ms_per_req": cpu_ms_per_req,
        "cores_busy": cores_busy,
    }


def _detail(contender: str, level: int, result: LoadResult) -> dict[str, Any]:
    """What the result row leaves out, for diagnosis: counts, error kinds, p90, mean, max."""
    return {
        "contender": contender,
        "concurrency": level,
        "requests": result.requests,
        "duration_s": round(result.duration_s, 3),
        "errors_by_kind": {k: v for k, v in result.errors_by_kind.items() if v},
        "p90_ms": round(result.p90_ms, 3),
        "mean_ms": round(result.mean_ms, 3),
        "max_ms": round(result.max_ms, 3),
    }


def _smoke(server: Server, body: bytes, body_file: Path) -> int:
    """One request before any load: the contender must answer it with a 2xx (over gRPC: a
    response message). Returns the size of a good gRPC answer, 0 for HTTP."""
    if server.spec.wire is Wire.OIP_GRPC:
        return loadgen.grpc_smoke(server.spec.infer_url, body_file)
    status, answer = server.post(body)
    if not 200 <= status < 300:
        raise ServerError(f"smoke request to {server.spec.infer_url} got {status}: "
                          f"{answer[:500].decode(errors='replace')}")
    return 0


def _load(spec: ServerSpec, body_file: Path, level: int, duration_s: float,
          ok_message_bytes: int, wrk_threads: int) -> LoadResult:
    """wrk over HTTP/1.1, h2load for gRPC."""
    if spec.wire is Wire.OIP_GRPC:
        return loadgen.run_h2load(spec.infer_url, body_file, connections=level,
                                  duration_s=duration_s, ok_message_bytes=ok_message_bytes)
    return loadgen.run_wrk(spec.infer_url, body_file, connections=level, duration_s=duration_s,
                           threads=wrk_threads)


def _measure(contender: Contender, levels: Sequence[int], duration_s: float, warmup_s: float,
             rows: list[list[float]], progress: Progress, scale: Scale) -> list[tuple[Row, Row]]:
    """Prepare, start, warm up and load one contender; (row, detail) for each level."""
    name = contender.name
    task = progress.add_task(f"{name}: preparing", total=len(levels) + 2)
    ws = Workspace(name=name, dir=venv.WORK / name, port=free_port(), workers=scale.workers)
    ws.dir.mkdir(parents=True, exist_ok=True)
    spec = contender.prepare(ws)
    bodies = [payloads.body(spec.wire, r, columns=models.FEATURE_NAMES, model=spec.model)
              for r in rows]
    if spec.wire is Wire.OIP_GRPC:  # h2load sends one body: the first row
        loadgen.ensure_h2load()
        bodies_file = ws.dir / "body.grpc"
        bodies_file.write_bytes(bodies[0])
    else:
        bodies_file = loadgen.write_bodies(ws.dir / "bodies.jsonl", bodies)
    progress.update(task, advance=1, description=f"{name}: starting")
    out = []
    with Server(spec, log_path=ws.dir / "server.log") as server, \
            PeakRss(server.pid).running() as rss:
        ok_bytes = _smoke(server, bodies[0], bodies_file)
        if warmup_s > 0:
            progress.update(task, description=f"{name}: warm-up {warmup_s:g}s at c={max(levels)}")
            _load(spec, bodies_file, max(levels), warmup_s, ok_bytes, scale.wrk_threads)
        progress.update(task, advance=1)
        rss.take_window()
        for level in levels:
            time.sleep(SETTLE_S)
            progress.update(task, description=f"{name}: c={level} for {duration_s:g}s")
            cpu_before = tree_cpu_s(server.pid)
            result = _load(spec, bodies_file, level, duration_s, ok_bytes, scale.wrk_threads)
            cpu_after = tree_cpu_s(server.pid)
            cpu_s = (None if cpu_before is None or cpu_after is None
                     else max(0.0, cpu_after - cpu_before))
            row = _row(name, level, result, rss.take_window(), cpu_s)
            detail = _detail(name, level, result)
            out.append((row, detail))
            progress.console.print(
                f"{name:<12} c={level:<2} {row['rps']:>6.0f} req/s  p50 {row['p50_ms']:6.2f}"
                f"  p99 {row['p99_ms']:6.2f} ms  err {row['errors']}  {row['peak_rss_mb']:.0f} MB"
                + (f"  {detail['errors_by_kind']}" if row["errors"] else ""),
                highlight=False)
            progress.update(task, advance=1)
    progress.update(task, description=f"{name}: done")
    return out


def run(contenders: list[str], levels: list[int], duration_s: float, warmup_s: float,
        out_dir: Path, *, keep_going: bool = False, scale: Scale | None = None,
        console: Console | None = None) -> list[dict[str, Any]]:
    """Benchmark ``contenders`` at each concurrency in ``levels`` and write the reports.

    Returns the result rows (``contender, concurrency, rps, p50_ms, p99_ms, p999_ms, errors,
    peak_rss_mb``). A contender that fails to start raises ``ServerError``, or with
    ``keep_going`` is listed under "Did not run" and skipped.
    """
    chosen = select(contenders)
    scale = scale or Scale()
    if not levels or any(level < 1 for level in levels):
        raise ValueError(f"concurrency levels must be positive integers, got {levels}")
    venvs = list(dict.fromkeys(c.venv for c in chosen if c.venv is not None))
    console = console or Console()
    for env in venvs:
        env.ensure(log=console.print)
    loadgen.ensure_wrk()
    rows = models.request_rows()
    results: list[Row] = []
    runs: list[Row] = []
    failures: list[dict[str, str]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        for contender in chosen:
            try:
                measured = _measure(contender, levels, duration_s, warmup_s, rows, progress,
                                    scale)
                results += [row for row, _ in measured]
                runs += [detail for _, detail in measured]
            except (ServerError, LoadError, OSError) as exc:
                if not keep_going:
                    raise
                failures.append({"contender": contender.name, "error": str(exc)})
                progress.console.print(f"[red]{contender.name} did not run:[/red] {exc}")
    doc = {
        "machine": machine_info(venvs),
        "settings": {
            "levels": list(levels), "duration_s": duration_s, "warmup_s": warmup_s,
            "wrk_threads": scale.wrk_threads, "workers": scale.workers, "omp_num_threads": 1,
            "contenders": {c.name: c.summary for c in chosen},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "results": results,
        "runs": runs,
        "failures": failures,
    }
    report.write_json(doc, out_dir / "serving.json")
    report.write_markdown(doc, out_dir / "serving.md")
    if results and not report.write_png(results, out_dir / "serving.png"):
        console.print("matplotlib not installed here: serving.png not written")
    return results


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"levels {QUICK.levels}, {QUICK.duration_s:g}s each (under 2 minutes)")
    p.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS),
                   help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    p.add_argument("--levels", type=_int_list, help="comma-separated concurrency levels")
    p.add_argument("--duration", type=float, help="seconds per level")
    p.add_argument("--warmup", type=float, help="warm-up seconds per contender")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output directory")
    p.add_argument("--workers", type=int, default=Scale.workers,
                   help="worker processes of every contender (gunicorn and MLflow workers, "
                        "MLServer's HTTP server plus inference workers, rendezvous serve "
                        "--processes); the default suits 2 cores")
    p.add_argument("--wrk-threads", type=int, default=Scale.wrk_threads,
                   help="wrk's threads (one suffices on 2 cores; give more on a machine "
                        "where the contenders outrun one)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.serving`` (and ``make bench``)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    try:
        select(names)
        if args.levels is not None and (not args.levels or min(args.levels) < 1):
            raise ValueError(f"--levels must be positive integers, got {args.levels}")
        if args.workers < 1 or args.wrk_threads < 1:
            raise ValueError(f"--workers and --wrk-threads must be at least 1, got "
                             f"{args.workers} and {args.wrk_threads}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Runs here first (often in the project's venv), continues in bench/.venv.
    venv.reexec_in_bench_venv("bench.serving", argv)
    plan = QUICK if args.quick else FULL
    console = Console()
    results = run(names, args.levels or plan.levels,
                  plan.duration_s if args.duration is None else args.duration,
                  plan.warmup_s if args.warmup is None else args.warmup,
                  args.out, keep_going=True, scale=Scale(args.workers, args.wrk_threads),
                  console=console)
    console.print(f"wrote {args.out}/serving.json, serving.md, serving.png")
    ran = {r["contender"] for r in results}
    return 0 if ran == set(names) else 1


if __name__ == "__main__":
    sys.exit(main())
