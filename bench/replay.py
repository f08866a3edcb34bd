"""Replay throughput: ``rendezvous replay`` against a plain ``model.predict`` over the same Parquet.

The reference model (``bench.models``: HistGradientBoostingClassifier, 20 features) is
registered in a fresh data directory, and an input archive is written in the decoy's format
(``roles.decoy.Rows``, one file per 10,000 requests) of held-out rows, for two request shapes:
one row per request (an API's traffic) and 16 rows per request. Then, in one run:

- ``replay``: ``analysis.replay`` scores the whole archive with the model in its model host
  (archive scan, re-encoding and digest check, the host round trip, scores written back);
  rows/s over the scoring loop (host start and warm-up excluded, reported apart);
- ``predict``: the physical limit: the same Parquet read with pyarrow into one matrix and
  scored by ``predict_proba`` of the same model in this process, in one call and in batches of
  the replay's batch size (256 requests' rows).

Usage::

    python -m bench.replay                     # 20,000 requests of 1 row, 2,000 of 16 rows
    python -m bench.replay --requests 2000 --out /tmp/replay

Writes ``replay.json``, ``replay.md`` and ``replay.png`` (with matplotlib) under ``--out``
(default ``bench/results/replay``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from bench.machine import machine_info
from bench.models import FEATURE_NAMES, reference_split, train_reference
from bench.report import write_results

ROOT = Path(__file__).resolve().parent.parent
DEP = "bench"
PER_FILE = 10_000


def write_archive(home: Path, rows: np.ndarray, per_request: int, sig: Any) -> int:
    """Archive ``rows`` as requests of ``per_request`` rows, in the decoy's format."""
    from rendezvous.core import messages
    from rendezvous.core.messages import Request
    from rendezvous.ids import new_request_id
    from rendezvous.roles.decoy import Rows, archive_dir, write_atomic
    from rendezvous.roles.worker import input_digest

    now = time.time_ns()
    n_requests = len(rows) // per_request
    pending = Rows(sig)
    day = time.strftime("%Y-%m-%d", time.gmtime(now / 1e9))
    for i in range(n_requests):
        chunk = rows[i * per_request:(i + 1) * per_request]
        t = now - (n_requests - i) * 1_000_000
        req = Request(request_id=new_request_id(), deployment=DEP, received_ns=t,
                      deadline_ns=t + 100_000_000, n_rows=per_request, return_to="bench",
                      inputs={c: chunk[:, j].tolist() for j, c in enumerate(FEATURE_NAMES)},
                      policy_version=1)
        pending.add(req, input_digest(messages.encode(req)))
        if len(pending.ids) >= PER_FILE * per_request or i == n_requests - 1:
            write_atomic(pending.table(), archive_dir(home, DEP) / f"date={day}" /
                         f"part-{i:012d}.parquet")
            pending = Rows(sig)
    return n_requests


def plain_predict(home: Path, model: Any, batch_rows: int) -> dict[str, float]:
    """rows/s of predict_proba over the archive's Parquet read into one matrix."""
    from rendezvous.roles.decoy import archive_dir

    t0 = time.perf_counter()
    table = pq.ParquetDataset(archive_dir(home, DEP)).read(columns=FEATURE_NAMES)
    x = np.column_stack([table[c].to_numpy() for c in FEATURE_NAMES])
    read_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.predict_proba(x)
    one_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    for i in range(0, len(x), batch_rows):
        model.predict_proba(x[i:i + batch_rows])
    batched_s = time.perf_counter() - t2
    n = len(x)
    return {"rows": n, "read_s": round(read_s, 4),
            "one_call_rows_per_s": round(n / (read_s + one_s), 1),
            "batched_rows_per_s": round(n / (read_s + batched_s), 1)}


def run_shape(per_request: int, n_rows: int, x: np.ndarray, model: Any) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from rendezvous import ModelSpec, Policy, Registry, Role
    from rendezvous.analysis.replay import BATCH, replay

    with tempfile.TemporaryDirectory(prefix="rdv-replay-") as tmp:
        home = Path(tmp)
        with Registry(home) as reg:
            ref = reg.register("ref", model, example=x[:64]).ref
            reg.apply_policy(DEP, Policy(models=[ModelSpec(ref, Role.CHAMPION)]))
            sig = reg.signature(ref)
        requests = write_archive(home, x[:n_rows], per_request, sig)
        doc = asyncio.run(replay(home, DEP, ref))
        # The model host computes on one thread (OMP_NUM_THREADS=1): so does the limit.
        with threadpool_limits(limits=1):
            limit = plain_predict(home, model, BATCH * per_request)
    return {"rows_per_request": per_request, "requests": requests, "rows": doc["rows_now"],
            "digests_matched": doc["digests"]["matched"],
            "replay_rows_per_s": doc["rows_per_s"], "replay_scoring_s": doc["scoring_seconds"],
            "replay_total_s": doc["seconds"], "latency_by_batch": doc["latency_by_batch"],
            "predict": limit}


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Replay throughput", "",
        f"Reference model (HistGradientBoostingClassifier, 20 features), {doc['when']}, on "
        f"{doc['machine']['cores']} cores ({doc['machine']['cpu_model']}). One run, on a machine "
        "shared with other jobs: expect noise of tens of percent.", "",
        "| rows/request | requests | replay rows/s | predict_proba rows/s (one call) | "
        "predict_proba rows/s (batches of 256 requests) | replay / batched limit | "
        "digests matched |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["shapes"]:
        p = r["predict"]
        lines.append(
            f"| {r['rows_per_request']} | {r['requests']} | {r['replay_rows_per_s']:,.0f} | "
            f"{p['one_call_rows_per_s']:,.0f} | {p['batched_rows_per_s']:,.0f} | "
            f"{r['replay_rows_per_s'] / p['batched_rows_per_s']:.2f} | "
            f"{r['digests_matched']} of {r['requests']} |")
    lines += ["", "Replay rows/s count the scoring loop (archive scan, re-encoding and digest "
              "check, model-host round trip, scores written); starting and warming the host "
              "is excluded (`replay_total_s` in the JSON includes it and the report). "
              "The limit reads the same Parquet into one matrix and calls `predict_proba` "
              "on one thread, as the host does.", ""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    shapes = doc["shapes"]
    labels = [f"{r['rows_per_request']} row(s)/request" for r in shapes]
    series = {"replay": [r["replay_rows_per_s"] for r in shapes],
              "predict_proba, batches": [r["predict"]["batched_rows_per_s"] for r in shapes],
              "predict_proba, one call": [r["predict"]["one_call_rows_per_s"] for r in shapes]}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.27
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(shapes)) + (i - 1) * width, values, width, label=name)
    ax.set_xticks(np.arange(len(shapes)), labels)
    ax.set_ylabel("rows/s")
    ax.set_yscale("log")
    ax.set_title("Replay throughput vs. plain predict over the same Parquet")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000,
                        help="requests of one row; the 16-row shape gets a tenth as many")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "replay")
    args = parser.parse_args()
    split = reference_split()
    model = train_reference(split)
    x = np.tile(split.x_test, (max(1, -(-args.requests * 2 // len(split.x_test))), 1))
    shapes = [run_shape(1, args.requests, x, model),
              run_shape(16, args.requests // 10 * 16, x, model)]
    doc = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python -m bench.replay " + " ".join(sys.argv[1:]),
           "machine": machine_info([]), "shapes": shapes}
    write_results(args.out, "replay", doc, markdown(doc), lambda p: plot(doc, p))
    print(markdown(doc))


if __name__ == "__main__":
    main()
