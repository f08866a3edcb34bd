"""CPU per request of a running ``rendezvous-4`` server, analytics on and off:
``python -m bench.analytics_serving_cpu [--duration S] [--concurrency C]``.

Throughput on a shared two-core machine is noisy; the CPU time the server's processes spend
per request much less so. Starts the ``rendezvous-4`` deployment of the serving benchmark
(``serve --processes 1``) once with ``RENDEZVOUS_ANALYTICS=1`` and once with ``=0``, loads it
with wrk flat out, as ``bench.serving`` does, and prints CPU ms per request: of the serving
processes, split by thread (the event loop, the stream log's writer, the ``to_thread`` pool),
with their analytics hosts (also shown alone), and of the model hosts, split by model;
wrk's latency percentiles; how many requests a worker's scores record held (its
micro-batch), over all models and per model; and where an answered request's time went inside
the server (``stage`` rows, p50 and p99: until its model's host began the batch, the predict,
until the rendezvous server filed the score, received to responded), read back from the
result and score records.
``--serve-args`` replaces the benchmark's ``--processes 1``, e.g.
``--serve-args='--processes 2'`` for two serving processes, each with a model host per model.
Flat out, the faster run also batches more, which lowers its cost per request on its own;
``--delay-ms`` paces each connection instead, for the same offered rate in both runs (at low
rates every stage handles requests one at a time, far from the regime of c=32).

The servers import ``rendezvous`` from the ``src`` beside this file, or ``--src``
(``PYTHONPATH``), whatever the environment's editable install says; the ``rendezvous from``
line (read off each process's stack with ``py-spy dump``) shows which. Needs ``wrk`` and
``py-spy`` on the PATH.
``--py-spy FILE`` also records one serving process of each run, only while a thread holds
the GIL (``FILE`` with ``-on``/``-off`` before its suffix; ``.svg``: a flame graph; any
other suffix: folded stacks).

``--sched-trace FILE.md`` also records the kernel scheduler's switches and wake-ups for a
few seconds in the middle of each run (Linux, root; ``bench.sched_trace``) and writes to
``FILE.md`` (``-on``/``-off`` before its suffix) how the serving process's event-loop thread
spent them: on a core, waiting for one (preempted by whom), asleep (woken by whom).

``--rounds N`` measures on and off N times, alternating which goes first (one run's
throughput on this machine moves by 20 % from run to run), and writes each round's
throughput ratio, their median and the CPU per request to ``--out``
(``analytics-rounds.{json,md,png}``)::

    python -m bench.analytics_serving_cpu --rounds 3 --concurrency 32 --duration 15 \
        --out bench/results/analytics-cost

``--against DIR`` makes the rounds a before and after instead: ``--src`` against the source
tree ``DIR`` (another worktree), analytics on in both (off with ``--only off``), each arm
named by its tree's commit, written to ``ab-rounds.{json,md,png}``::

    git worktree add /tmp/before HEAD~1
    python -m bench.analytics_serving_cpu --rounds 4 --against /tmp/before/src \
        --concurrency 32 --duration 15 --out bench/results/uvloop

``--against-serve-args ARGS`` compares two ways of serving the same tree: the
``--serve-args`` (or the benchmark's ``--processes 1``) against ``ARGS``, each arm named by
its arguments::

    python -m bench.analytics_serving_cpu --rounds 4 --serve-args='--processes 1' \
        --against-serve-args='--processes 2' --concurrency 32 --duration 15 \
        --out bench/results/processes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import loadgen, sched_trace
from bench.models import request_rows
from bench.payloads import oip_v2
from bench.rendezvous_contender import _prepare, serving_processes
from bench.server import Server, Workspace, free_port
from bench.venv import ROOT

# How the serving benchmark serves ``rendezvous-4`` on its default workers.
DEFAULT_SERVE = f"--processes {serving_processes('bench4', Workspace.workers)}"

_THREAD = re.compile(r'^Thread (0x[0-9A-Fa-f]+|\d+) \((?:idle|active)[^)]*\): "(.*)"')


def _processes(pid: int) -> dict[int, str]:
    """pid -> kind (``serving``, ``analytics host`` or ``model host MODEL``) of the server
    and its descendants."""
    root = psutil.Process(pid)
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "rendezvous.hosting.host_main" in cmd and "--model" in cmd:
            out[p.pid] = f"model host {cmd[cmd.index('--model') + 1]}"
        elif "rendezvous.hosting.analytics_main" in cmd:
            out[p.pid] = "analytics host"
        else:
            out[p.pid] = "serving"
    return out


def _threads(pids: dict[int, str]) -> dict[tuple[int, int], float]:
    """(pid, thread id) -> CPU seconds so far."""
    out = {}
    for pid in pids:
        try:
            for t in psutil.Process(pid).threads():
                out[(pid, t.id)] = t.user_time + t.system_time
        except psutil.NoSuchProcess:
            continue
    return out


def _dump(pid: int) -> str:
    return subprocess.run(["py-spy", "dump", "--full-filenames", "-p", str(pid)],
                          capture_output=True, text=True).stdout


def _thread_names(dump: str) -> dict[int, str]:
    """OS thread id -> Python thread name, from a ``py-spy dump``; pool threads by pool."""
    names = {}
    for line in dump.splitlines():
        m = _THREAD.match(line)
        if m and m.group(1).isdigit():
            name = m.group(2)
            if name.startswith("asyncio_"):
                name = "to_thread pool"
            elif name.startswith("asyncio-waitpid"):
                name = "waitpid"
            names[int(m.group(1))] = name
    return names


def _sources(dumps: dict[int, str], pids: dict[int, str]) -> str:
    where = []
    for pid, dump in dumps.items():
        roots = sorted({line.rsplit("(", 1)[-1].split("/rendezvous/")[0]
                        for line in dump.splitlines() if "/rendezvous/" in line})
        where.append(f"{pids[pid]} {pid}: {', '.join(roots) or '?'}")
    return "rendezvous from: " + "; ".join(where)


def _records(home: Path, topic: str) -> Iterator[Any]:
    """Every record of ``topic`` in the server's stream logs, decoded (msgpack)."""
    import msgspec

    for log in home.glob("streams*.db"):
        with sqlite3.connect(log) as db:
            for (data,) in db.execute("SELECT data FROM records WHERE topic = ?", (topic,)):
                yield msgspec.msgpack.decode(data)


def _scores_per_record(home: Path) -> dict[str, float]:
    """How many requests a worker's scores record holds on average (its micro-batch), over
    every model and per model."""
    per: dict[str, list[int]] = {}
    for scores in _records(home, "bench4.scores"):
        if scores:
            per.setdefault(scores[0]["model"], []).append(len(scores))
    out = {"scores per scores record": sum(map(sum, per.values()))
           / max(1, sum(map(len, per.values())))}
    for model, sizes in sorted(per.items()):
        out[f"scores per scores record: {model}"] = sum(sizes) / len(sizes)
    return out


def _stages(home: Path, since_ns: int) -> dict[str, float]:
    """Where an answered request's time went inside the server (p50 and p99, ms), from its
    result record and the answering model's score, for requests received from ``since_ns``
    (the measured load, not the warm-up): *to start*, until that model's host began the
    request's batch (the input's append, the worker's fetch, the trip to the host, the
    host's wait for a core); *predict*, the batch in the host; *to filed*, until the
    rendezvous server filed the score (the trip back, the score's append and fetch); and
    *in server*, received to responded. What wrk sees beyond *in server* is the HTTP
    edge: reading and parsing the request, waiting for its input to be durable, the answer's
    trip to the proxy and its write."""
    times = {(s["request_id"], s["model"]): (s["started_ns"], s["finished_ns"])
             for scores in _records(home, "bench4.scores") for s in scores}
    parts: dict[str, list[float]] = {"to start": [], "predict": [], "to filed": [],
                                     "in server": []}
    for r in _records(home, "bench4.results"):
        model = r.get("model")
        outcome = r.get("models", {}).get(model, {})
        got = times.get((r["request_id"], model))
        if r.get("received_ns", 0) < since_ns or got is None or not outcome.get("filed_ns"):
            continue
        started, finished = got
        parts["to start"].append((started - r["received_ns"]) / 1e6)
        parts["predict"].append((finished - started) / 1e6)
        parts["to filed"].append((outcome["filed_ns"] - finished) / 1e6)
        parts["in server"].append((r["responded_ns"] - r["received_ns"]) / 1e6)
    out: dict[str, float] = {}
    for name, xs in parts.items():
        if len(xs) >= 2:
            out[f"stage p50 ms: {name}"] = statistics.median(xs)
            out[f"stage p99 ms: {name}"] = statistics.quantiles(xs, n=100, method="inclusive")[98]
    return out


def _paced(tmp: Path, delay_ms: float) -> Path:
    """wrk's request script with a pause of ``delay_ms`` before each request of a
    connection (wrk's ``delay`` hook)."""
    script = tmp / "paced.lua"
    script.write_text(loadgen.LUA_SCRIPT.read_text()
                      + f"\nfunction delay()\n  return {delay_ms:g}\nend\n")
    return script


def _wrk(url: str, bodies: Path, *, connections: int, duration_s: float,
         script: Path) -> loadgen.LoadResult:
    argv = loadgen.wrk_argv(url, bodies, connections=connections, duration_s=duration_s)
    argv[argv.index(str(loadgen.LUA_SCRIPT))] = str(script)
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=duration_s + 60).stdout
    return loadgen.parse(out)


def measure(analytics: bool, *, duration: float, concurrency: int, warmup: float,
            delay_ms: float, py_spy: Path | None, src: Path,
            serve_args: Sequence[str] | None = None,
            sched: Path | None = None) -> dict[str, float]:
    """CPU ms per request by part, plus ``req/s``, ``errors``, wrk's percentiles and the
    micro-batches. ``serve_args`` replace the serving benchmark's ``DEFAULT_SERVE``."""
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace("cpu", Path(tmp), free_port())
        spec = _prepare(ws, "bench4", None if serve_args is None else list(serve_args))
        env = {**spec.env, "PYTHONPATH": f"{src}:{ROOT}",
               "RENDEZVOUS_ANALYTICS": "1" if analytics else "0"}
        spec = dataclasses.replace(spec, env=env)
        bodies = loadgen.write_bodies(Path(tmp) / "bodies.txt",
                                      [oip_v2(r) for r in request_rows()])
        script = _paced(Path(tmp), delay_ms)
        with Server(spec, log_path=Path(tmp) / "server.log") as server:
            _wrk(spec.infer_url, bodies, connections=concurrency, duration_s=warmup,
                 script=script)
            time.sleep(1.0)
            pids = _processes(server.pid)
            before = _threads(pids)
            serving = [p for p, k in pids.items() if k == "serving"]
            # with --processes N > 1 the supervisor serves nothing itself: record a child
            one = next((p for p in serving if p != server.pid), server.pid)
            spy = None
            if py_spy is not None:
                fmt = "flamegraph" if py_spy.suffix == ".svg" else "raw"
                spy = subprocess.Popen(["py-spy", "record", "-o", str(py_spy), "-r", "200",
                                        "--format", fmt, "--gil", "--nonblocking",
                                        "-p", str(one)],
                                       stdout=subprocess.DEVNULL)
            traced: list[str] = []

            def trace() -> None:  # a few seconds from the middle of the measured run
                time.sleep(duration / 3)
                traced.append(sched_trace.record(min(3.0, duration / 3)))

            tracer = threading.Thread(target=trace) if sched is not None else None
            if tracer is not None:
                tracer.start()
            since_ns = time.time_ns()
            load = _wrk(spec.infer_url, bodies, connections=concurrency,
                        duration_s=duration, script=script)
            time.sleep(1.5)  # the monitor and the archivers catch up
            after = _threads(pids)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait()
            dumps = {pid: _dump(pid) for pid in pids}
            if tracer is not None:
                tracer.join()
        micro = _scores_per_record(Path(tmp) / "home")
        micro |= _stages(Path(tmp) / "home", since_ns)
    print(_sources(dumps, pids), file=sys.stderr)
    names = {pid: _thread_names(d) for pid, d in dumps.items()}
    if sched is not None:
        if not traced:
            raise RuntimeError("the scheduler trace failed (its error is printed above)")
        _write_sched(sched, traced[0], pids, names, one, load)
    per: dict[str, float] = {"req/s": load.rps, "errors": load.errors, "p50 ms": load.p50_ms,
                             "p99 ms": load.p99_ms, "p99.9 ms": load.p999_ms, **micro}
    for (pid, tid), t1 in after.items():
        kind = pids[pid]
        part = kind if kind != "serving" else f"serving: {names[pid].get(tid, 'other threads')}"
        spent = (t1 - before.get((pid, tid), 0.0)) * 1000 / max(1, load.requests)
        per[part] = per.get(part, 0.0) + spent
        # The analytics host does what the serving process did before it had one: counted
        # with it, and on its own as ``analytics host``.
        whole = "model host (all)" if kind.startswith("model host") else "serving (all)"
        per[whole] = per.get(whole, 0.0) + spent
    return per


def _write_sched(path: Path, trace: str, pids: dict[int, str],
                 names: dict[int, dict[int, str]], one: int, load: loadgen.LoadResult) -> None:
    """How serving process ``one``'s event-loop thread spent ``trace``, to ``path`` (Markdown)
    and stderr. The trace itself (megabytes) is not kept."""
    labels = {pid: kind for pid, kind in pids.items()}
    for pid, threads in names.items():
        for tid, name in threads.items():
            labels[tid] = f"{pids[pid]}: {name}"
    summary = sched_trace.summarize(trace, one, labels)
    table = (f"Serving process {one}, its event-loop thread (`bench.sched_trace`), during a run "
             f"of {load.rps:,.0f} req/s (wrk p50 {load.p50_ms:.1f} ms):\n\n" + summary.table())
    path.write_text(table + "\n")
    print(table, file=sys.stderr)


@dataclass(frozen=True)
class Arm:
    """One side of the rounds: its name in the results, analytics on or off, the source tree,
    the arguments of ``rendezvous serve`` (None: the serving benchmark's)."""

    name: str
    analytics: bool
    src: Path
    serve_args: tuple[str, ...] | None = None

    @property
    def how(self) -> str:
        """How this arm serves, as the results say it."""
        return " ".join(self.serve_args) if self.serve_args is not None else DEFAULT_SERVE


def tree_name(src: Path) -> str:
    """A source tree's commit (``git rev-parse --short HEAD``, ``+`` when it has changes), or
    its path outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", ".")
        return git("rev-parse", "--short", "HEAD") + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return str(src)


def rounds(n: int, out: Path, arms: tuple[Arm, Arm], **kw: Any) -> None:
    """``n`` rounds of both arms, alternating which goes first; each round's ratios of the
    first arm to the second."""
    a, b = arms
    runs: list[dict[str, Any]] = []
    for i in range(n):
        order = (a, b) if i % 2 == 0 else (b, a)
        got = {arm.name: measure(arm.analytics, src=arm.src, serve_args=arm.serve_args, **kw)
               for arm in order}
        cpu = {k: v.get("serving (all)", 0.0) + v.get("model host (all)", 0.0)
               for k, v in got.items()}
        row: dict[str, Any] = {"round": i + 1, "first": order[0].name}
        for what, key, digits in (("rps", "req/s", 1), ("errors", "errors", 0),
                                  ("p99_ms", "p99 ms", 1)):
            for arm in arms:
                row[f"{arm.name}_{what}"] = round(got[arm.name][key], digits)
        for arm in arms:
            row[f"{arm.name}_cpu_ms"] = round(cpu[arm.name], 3)
        for arm in arms:  # the same, split: the serving processes, the model hosts
            for part, key in (("serving", "serving (all)"), ("hosts", "model host (all)")):
                row[f"{arm.name}_{part}_cpu_ms"] = round(got[arm.name].get(key, 0.0), 3)
        row["ratio"] = round(got[a.name]["req/s"] / max(got[b.name]["req/s"], 1e-9), 3)
        runs.append(row)
    doc = {"command": "python -m bench.analytics_serving_cpu " + " ".join(sys.argv[1:]),
           "arms": [{"name": arm.name, "analytics": arm.analytics, "src": str(arm.src),
                     "serve": arm.how} for arm in arms],
           "rounds": runs, "settings": {k: str(v) for k, v in kw.items()}}
    write(doc, out)


def _geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def write(doc: dict[str, Any], out: Path) -> None:
    """``analytics-rounds.{json,md,png}`` (arms ``on`` and ``off``) or ``ab-rounds.*`` (two
    source trees) from the rounds in ``doc`` (adds the summary)."""
    runs = doc["rounds"]
    a, b = (arm["name"] for arm in doc["arms"])
    ratios = [r["ratio"] for r in runs]
    # Whichever runs second in a round tends to be faster here: average each order first,
    # then the two orders, so that an odd number of rounds does not favour one side.
    by_order = {first: _geomean([r["ratio"] for r in runs if r["first"] == first])
                for first in (a, b) if any(r["first"] == first for r in runs)}
    doc["median_ratio"] = round(statistics.median(ratios), 3)
    doc["ratio_by_first"] = {k: round(v, 3) for k, v in by_order.items()}
    doc["balanced_ratio"] = round(_geomean(list(by_order.values())), 3)
    doc["median_cpu_ratio"] = round(statistics.median(
        r[f"{a}_cpu_ms"] / r[f"{b}_cpu_ms"] for r in runs), 3)
    cpu_by_order = [_geomean([r[f"{a}_cpu_ms"] / r[f"{b}_cpu_ms"] for r in runs
                              if r["first"] == first]) for first in by_order]
    doc["balanced_cpu_ratio"] = round(_geomean(cpu_by_order), 3)
    p99 = [r[f"{a}_p99_ms"] / r[f"{b}_p99_ms"] for r in runs if r.get(f"{b}_p99_ms")]
    doc["median_p99_ratio"] = round(statistics.median(p99), 3) if p99 else None
    doc["median_part_cpu_ratio"] = {
        label: round(statistics.median(r[f"{a}_{part}_cpu_ms"] / r[f"{b}_{part}_cpu_ms"]
                                       for r in runs), 3)
        for part, label in (("serving", "serving processes"), ("hosts", "model hosts"))
        if all(r.get(f"{b}_{part}_cpu_ms") for r in runs)}
    analytics = (a, b) == ("on", "off")
    stem = "analytics-rounds" if analytics else "ab-rounds"
    title = ("Analytics on / off" if analytics else f"{a} / {b}") + ", alternating rounds"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    cols = list(runs[0])
    orders = ", ".join(f"{v:.2f} with {k} first" for k, v in doc["ratio_by_first"].items())
    trees = [] if analytics else [
        *(f"- `{arm['name']}`: `{arm['src']}`, analytics {'on' if arm['analytics'] else 'off'}"
          + (f", `rendezvous serve {arm['serve']}`" if "serve" in arm else "")
          for arm in doc["arms"]),
        ""]
    lines = [f"# {title}", "", f"Command: `{doc['command']}`", "", *trees,
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
             *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in runs), "",
             f"- Throughput ratio {a}/{b}: median **{doc['median_ratio']:.2f}** (rounds: "
             f"{', '.join(f'{x:.2f}' for x in ratios)}); by order {orders}; both orders "
             f"weighed alike: **{doc['balanced_ratio']:.2f}**.",
             f"- CPU per request {a}/{b} (serving processes and model hosts): median "
             f"{doc['median_cpu_ratio']:.2f}; both orders weighed alike: "
             f"**{doc['balanced_cpu_ratio']:.2f}**.",
             *([f"- wrk's p99 {a}/{b}: median **{doc['median_p99_ratio']:.2f}** (rounds: "
                f"{', '.join(f'{x:.2f}' for x in p99)})."] if p99 else []),
             *(f"- CPU per request {a}/{b}, {label}: median **{ratio:.2f}**."
               for label, ratio in doc.get("median_part_cpu_ratio", {}).items())]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if p99 else 1, figsize=(12 if p99 else 7, 3.6),
                             constrained_layout=True, squeeze=False)
    xs = [r["round"] for r in runs]
    label = {a: "analytics on", b: "analytics off"} if analytics else {a: a, b: b}
    panels = [("rps", "req/s", f"rendezvous-4: throughput, {title.split(',')[0]} (ratio above)")]
    if p99:
        panels.append(("p99_ms", "wrk p99 ms", "p99 latency, same runs"))
    for ax, (what, unit, heading) in zip(axes[0], panels, strict=False):
        ax.bar([x - 0.2 for x in xs], [r[f"{a}_{what}"] for r in runs], 0.4, label=label[a])
        ax.bar([x + 0.2 for x in xs], [r[f"{b}_{what}"] for r in runs], 0.4, label=label[b])
        ax.set_xticks(xs, [f"round {x} ({r['first']} first)" for x, r in zip(xs, runs,
                                                                             strict=True)])
        ax.set_ylabel(unit)
        ax.set_title(heading)
        ax.legend(loc="lower right")
    for r in runs:
        axes[0][0].annotate(f"{r['ratio']:.2f}", (r["round"], max(r[f"{a}_rps"],
                                                                  r[f"{b}_rps"])),
                            ha="center", va="bottom")
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of load (8)")
    ap.add_argument("--concurrency", type=int, default=16, help="wrk connections (16)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds (3)")
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="pause before each request of a connection (default 0: flat out)")
    ap.add_argument("--only", choices=["on", "off"], help="one of the two runs")
    ap.add_argument("--py-spy", type=Path, help="record one serving process of each run")
    ap.add_argument("--sched-trace", type=Path,
                    help="trace the scheduler during each run (Linux, root) and write how the "
                         "serving process's event-loop thread spent it to this Markdown file")
    ap.add_argument("--src", type=Path, default=ROOT / "src",
                    help="the rendezvous source tree the servers run (default: the one beside "
                         "this script), e.g. another worktree's, for a before and after")
    ap.add_argument("--rounds", type=int, default=0,
                    help="alternating on/off rounds, with their ratios written to --out")
    ap.add_argument("--against", type=Path,
                    help="with --rounds: compare --src with this source tree instead of "
                         "analytics on with off (both on, or as --only says)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "analytics-cost")
    ap.add_argument("--serve-args", default=None,
                    help="arguments for `rendezvous serve` instead of the serving benchmark's "
                         f"'{DEFAULT_SERVE}', e.g. '--processes 2'")
    ap.add_argument("--against-serve-args", default=None,
                    help="with --rounds: compare --serve-args with these arguments for "
                         "`rendezvous serve` instead of analytics on with off (same tree, "
                         "both on, or as --only says)")
    args = ap.parse_args(argv)
    serve_args = shlex.split(args.serve_args) if args.serve_args is not None else None
    if args.against is not None and not args.rounds:
        ap.error("--against compares two source trees in --rounds; add --rounds N")
    if args.against_serve_args is not None:
        if not args.rounds:
            ap.error("--against-serve-args compares two ways of serving in --rounds; add "
                     "--rounds N")
        if args.against is not None:
            ap.error("give --against (two source trees) or --against-serve-args (two ways of "
                     "serving one tree), not both")
    if args.sched_trace is not None:
        if args.rounds:
            ap.error("--sched-trace traces single runs; drop --rounds (or --sched-trace)")
        why = sched_trace.ready()
        if why:
            ap.error(f"--sched-trace: {why}")
    for flag, tree in (("--src", args.src), ("--against", args.against)):
        # A tree without the package would not fail: the servers would import the editable
        # install instead, and the rounds would compare a tree with itself.
        if tree is not None and not (tree / "rendezvous" / "__init__.py").is_file():
            ap.error(f"{flag} {tree}: no rendezvous package there; give a source tree's src "
                     "folder, e.g. that of a worktree made with `git worktree add DIR COMMIT`")
    if args.rounds:
        src = args.src.resolve()
        on = args.only != "off"
        way = tuple(serve_args) if serve_args is not None else None
        if args.against_serve_args is not None:
            other = Arm("", on, src, tuple(shlex.split(args.against_serve_args)))
            mine = Arm("", on, src, way)
            if mine.how == other.how:
                ap.error(f"--serve-args and --against-serve-args are the same "
                         f"('{mine.how}'); give two different ways of serving")
            arms = (dataclasses.replace(mine, name=mine.how),
                    dataclasses.replace(other, name=other.how))
        elif args.against is None:
            arms = (Arm("on", True, src, way), Arm("off", False, src, way))
        else:
            old = args.against.resolve()
            names = [tree_name(src), tree_name(old)]
            if names[0] == names[1]:
                names = [f"{names[0]} ({src})", f"{names[1]} ({old})"]
            arms = (Arm(names[0], on, src, way), Arm(names[1], on, old, way))
        rounds(args.rounds, args.out, arms, duration=args.duration,
               concurrency=args.concurrency, warmup=args.warmup, delay_ms=args.delay_ms,
               py_spy=None)
        return 0
    rows = {}
    for on in (True, False):
        name = "on" if on else "off"
        if args.only in (None, name):
            rows[name] = measure(on, duration=args.duration, concurrency=args.concurrency,
                                 warmup=args.warmup, delay_ms=args.delay_ms,
                                 src=args.src.resolve(), serve_args=serve_args,
                                 py_spy=args.py_spy and args.py_spy.with_stem(
                                     f"{args.py_spy.stem}-{name}"),
                                 sched=args.sched_trace and args.sched_trace.with_stem(
                                     f"{args.sched_trace.stem}-{name}"))
    print(f"CPU ms per request ({args.duration:g} s of wrk, {args.concurrency} connections, "
          f"{args.delay_ms:g} ms pause before each request)")
    parts = sorted({p for r in rows.values() for p in r})
    print(f"  {'':36s}" + "".join(f"{n:>12s}" for n in rows))
    for part in parts:
        print(f"  {part:36s}" + "".join(f"{r.get(part, 0.0):12.3f}" for r in rows.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
