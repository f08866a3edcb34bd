"""CPU per row of each model the serving benchmark deploys, by batch size:
``python -m bench.model_cost [--out DIR]``.

The serving benchmark's ``rendezvous-4`` scores every request with four models (the reference
HistGradientBoosting champion, a logistic fallback, a HistGradientBoosting challenger and a
logistic canary); every other contender scores it with the champion alone. This measures
what the models alone cost, with no server: ``predict_proba`` on the benchmark's request rows
in batches of 1 (what the other contenders run per request), 16 (about the micro-batch a
Rendezvous worker scores at c=32) and 256, single-threaded (``OMP_NUM_THREADS=1``, as the
benchmark runs every server), CPU time (``time.process_time``), the least of three rounds.

It answers how much of a request's CPU the models take before any serving work: the sum of
the four models' cost per row at the micro-batch, against the champion's cost per request at
batch 1. Writes ``model-cost.{json,md,png}`` to ``--out`` (default
``bench/results/model-cost``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before scikit-learn loads its OpenMP runtime

import numpy as np

from bench.machine import machine_info
from bench.models import reference_split
from bench.rendezvous_contender import MODELS
from bench.report import write_results
from bench.venv import ROOT

BATCHES = (1, 16, 256)
ROWS_PER_ROUND = 4096
ROUNDS = 3
MICRO_BATCH = 16


def cost_per_row_ms(model: Any, rows: Any, batch: int) -> float:
    """The least of ``ROUNDS`` rounds of CPU ms per row, predicting ``rows`` in batches."""
    n = len(rows) - len(rows) % batch
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for i in range(0, n, batch):
            model.predict_proba(rows[i:i + batch])
        best = min(best, (time.process_time() - start) * 1000 / n)
    return best


def measure() -> dict[str, Any]:
    split = reference_split()
    rows = np.resize(split.x_test, (ROWS_PER_ROUND, split.x_test.shape[1]))
    costs = {}
    for name, train in MODELS.items():
        model = train(split)
        costs[name] = {str(b): round(cost_per_row_ms(model, rows, b), 4) for b in BATCHES}
    four = sum(c[str(MICRO_BATCH)] for c in costs.values())
    one = costs["hgb"]["1"]
    return {"command": "python -m bench.model_cost", "machine": machine_info([]),
            "ms_per_row": costs, "micro_batch": MICRO_BATCH,
            "four_models_at_micro_batch_ms": round(four, 4),
            "champion_at_batch_1_ms": one, "ratio": round(four / one, 3)}


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = ["# What the models alone cost", "",
             f"{m.get('cpu_model', '')}, {m.get('cores', '')} cores, Python {m.get('python', '')}. "
             f"Command: `{doc['command']}`. CPU ms per row of `predict_proba`, the least of "
             f"{ROUNDS} rounds of {ROWS_PER_ROUND} rows, one thread.", "",
             "| model | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
             "|---|" + "---|" * len(BATCHES)]
    for name, c in doc["ms_per_row"].items():
        lines.append(f"| {name} | " + " | ".join(f"{c[str(b)]:.4f}" for b in BATCHES) + " |")
    lines += ["", f"- The four models of `rendezvous-4` at batches of {doc['micro_batch']}: "
                  f"**{doc['four_models_at_micro_batch_ms']:.4f} ms** per request; the "
                  f"champion alone at batch 1 (every other contender): "
                  f"**{doc['champion_at_batch_1_ms']:.4f} ms**, a ratio of "
                  f"**{doc['ratio']:.2f}**."]
    return "\n".join(lines) + "\n"


def write_png(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(doc["ms_per_row"])
    width = 0.8 / len(BATCHES)
    for i, b in enumerate(BATCHES):
        ax.bar([x + i * width for x in range(len(names))],
               [doc["ms_per_row"][n][str(b)] for n in names], width, label=f"batch {b}")
    ax.set_xticks([x + width for x in range(len(names))], names)
    ax.set_ylabel("CPU ms per row")
    ax.set_yscale("log")
    ax.set_title("predict_proba CPU per row, by batch size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "model-cost")
    args = ap.parse_args()
    doc = measure()
    write_results(args.out, "model-cost", doc, markdown(doc), lambda p: write_png(doc, p))
    print(markdown(doc))


if __name__ == "__main__":
    main()
