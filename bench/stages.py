"""Where a request's time goes at c=1, engine by engine: ``python -m bench.stages``.

Serves the isolation benchmark's trivial champion alone (``bench.isolation``), once per
engine, sends sequential requests and then reads each request's result record, whose
timestamps (``received_ns``, each model's ``latency_ms`` up to its score's ``finished_ns``,
``filed_ns``, ``responded_ns``) split the server's part of the latency into stages:

- *to scored*: received by the proxy until the model's score is computed (the input's append,
  the worker's fetch, the trip to the model host and the predict);
- *to filed*: until the rendezvous server has the score (the score's append and fetch);
- *to responded*: until the rendezvous server decides (``responded_ns``);
- *client*: the whole round trip seen by the client (HTTP, the return to the proxy).

Medians of each stage, in ms. Every process runs on this machine, so their clocks agree.

    python -m bench.stages --requests 300 --engines embedded,local-nats
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.isolation import Scenario, sequential, setup, start, stop
from bench.server import free_port


async def _results(streams: str, home: Path) -> list[Any]:
    from rendezvous.core import messages
    from rendezvous.streams import open_stream

    stream = await open_stream(streams, home=home)
    try:
        records = await stream.read("dep.results", from_offset=1, limit=1_000_000)
    finally:
        await stream.close()
    return [messages.result_decoder.decode(r.data) for r in records]


def _stages(results: list[Any]) -> dict[str, float]:
    scored, filed, responded = [], [], []
    for res in results:
        (outcome,) = res.models.values()
        if outcome.latency_ms is None or not outcome.filed_ns:
            continue
        scored.append(outcome.latency_ms)
        filed.append((outcome.filed_ns - res.received_ns) / 1e6)
        responded.append((res.responded_ns - res.received_ns) / 1e6)
    med = statistics.median
    return {"to_scored_ms": round(med(scored), 2), "to_filed_ms": round(med(filed), 2),
            "to_responded_ms": round(med(responded), 2), "n": len(scored)}


def run(engine: str, requests: int, work: Path) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="stages-", dir=work))
    sc = Scenario(f"alone on {engine}", streams=engine)
    setup(home, sc)
    port = free_port()
    log = work / f"{home.name}.log"
    proc = start(home, port, sc, log)
    url = f"http://127.0.0.1:{port}"
    try:
        sequential(url, 20)  # let connections and caches settle
        client = sequential(url, requests)
        time.sleep(1)
        nats = re.search(rb"nats-server at (nats://\S+)", log.read_bytes())
        if nats is not None:  # read while the private nats-server still runs
            results = asyncio.run(_results(nats.group(1).decode(), home))
    finally:
        stop(proc)
    if nats is None:
        results = asyncio.run(_results("embedded", home))
    return {"engine": engine, "client_ms": client["c1_p50_ms"],
            **_stages(results[20:])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--engines", default="embedded,local-nats")
    p.add_argument("--out", type=Path, default=None, help="also write stages.md here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    rows = [run(e, args.requests, work) for e in args.engines.split(",")]
    cols = ["engine", "client_ms", "to_scored_ms", "to_filed_ms", "to_responded_ms", "n"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
             *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows)]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python -m bench.stages " + " ".join(sys.argv[1:])
        (args.out / "stages.md").write_text(
            "# Where a request's time goes at c=1 (medians, ms)\n\n"
            f"Command: `{command}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
