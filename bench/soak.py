"""Soak: does per-request cost stay flat as requests pile up? (``python -m bench.soak``)

Serves one contender (default ``rendezvous-4``) and loads it without pause for ``--minutes``
at one concurrency, in back-to-back windows of ``--window`` seconds; for each window it
records throughput, p50/p99 and the server's process-tree RSS (peak and at the end of the
window). Flat RSS and flat throughput across windows mean no unbounded mailboxes, queues or
caches. Writes ``bench/results/soak.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import loadgen, models, payloads, venv
from bench.contenders import select
from bench.machine import machine_info
from bench.server import PeakRss, Server, Workspace, free_port, tree_rss_bytes

RESULTS = Path(__file__).resolve().parent / "results"


def soak(contender: str, *, minutes: float, window_s: float, connections: int,
         out_dir: Path) -> list[dict[str, Any]]:
    (chosen,) = select([contender])
    if chosen.venv is not None:
        chosen.venv.ensure(log=print)
    loadgen.ensure_wrk()
    ws = Workspace(name=f"soak-{contender}", dir=venv.WORK / f"soak-{contender}",
                   port=free_port())
    ws.dir.mkdir(parents=True, exist_ok=True)
    spec = chosen.prepare(ws)
    bodies = [payloads.body(spec.wire, r, columns=models.FEATURE_NAMES)
              for r in models.request_rows()]
    bodies_file = loadgen.write_bodies(ws.dir / "bodies.jsonl", bodies)
    windows: list[dict[str, Any]] = []
    started = time.monotonic()
    with Server(spec, log_path=ws.dir / "server.log") as server, \
            PeakRss(server.pid).running() as rss:
        total = 0
        while time.monotonic() - started < minutes * 60:
            result = loadgen.run_wrk(spec.infer_url, bodies_file, connections=connections,
                                     duration_s=window_s)
            total += result.requests
            row = {
                "t_s": round(time.monotonic() - started, 1),
                "requests_so_far": total,
                "rps": round(result.rps, 1),
                "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                "errors": result.errors,
                "peak_rss_mb": round(rss.take_window() / 2**20, 1),
                "end_rss_mb": round(tree_rss_bytes(server.pid) / 2**20, 1),
            }
            windows.append(row)
            print(f"{row['t_s']:>6.0f} s  {row['rps']:>7.0f} req/s  p99 {row['p99_ms']:6.2f} ms"
                  f"  err {row['errors']}  rss {row['end_rss_mb']:.0f} MB", flush=True)
    doc = {"machine": machine_info([]), "contender": contender, "summary": chosen.summary,
           "connections": connections, "window_s": window_s, "windows": windows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "soak.md").write_text(markdown(doc))
    return windows


def markdown(doc: dict[str, Any]) -> str:
    w = doc["windows"]
    lines = [
        f"# Soak: {doc['contender']} at c={doc['connections']}",
        "",
        f"{doc['summary']}. Back-to-back {doc['window_s']:g} s windows of wrk load; RSS is the "
        "server's whole process tree.",
        "",
        "| t (s) | req/s | p50 ms | p99 ms | errors | peak RSS MB | RSS at end MB |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['t_s']:.0f} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
          f"{r['errors']} | {r['peak_rss_mb']:.0f} | {r['end_rss_mb']:.0f} |" for r in w),
        "",
    ]
    if len(w) >= 4:
        half = len(w) // 2
        first = sum(r["end_rss_mb"] for r in w[1:half]) / max(1, half - 1)
        last = sum(r["end_rss_mb"] for r in w[half:]) / (len(w) - half)
        rps1 = sum(r["rps"] for r in w[:half]) / half
        rps2 = sum(r["rps"] for r in w[half:]) / (len(w) - half)
        lines += [
            f"- RSS, mean of the second half vs the first (after the first window): "
            f"{last:.0f} vs {first:.0f} MB ({last - first:+.0f} MB)",
            f"- Throughput, second half vs first: {rps2:,.0f} vs {rps1:,.0f} req/s "
            f"({rps2 / rps1:.2f}x)",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contender", default="rendezvous-4")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    soak(args.contender, minutes=args.minutes, window_s=args.window,
         connections=args.connections, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
