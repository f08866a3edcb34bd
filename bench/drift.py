"""Drift and accuracy alarms: false alarms and time to detection (``python -m bench.drift``).

Synthetic traffic goes through the monitor's own statistics (``core.analytics``, default
settings): 12 numeric input columns, an 8,000-row training reference, a logistic canary whose
score reference is its score on that sample. Measured:

1. stationary traffic: false alarms (column drift + canary drift) per 1,000,000 requests;
2. a 0.5 sigma shift of a quarter of the columns (3 of 12), starting at a random request:
   requests from the shift until the column-drift alarm (and the canary alarm) fires;
3. labels: a classifier right 90 % of the time, then 85 % (a 5-point drop): labelled requests
   until the accuracy alarm fires, and false accuracy alarms on stationary labels.

Beside them, in the same run and on the same data (``bench/.venv-drift``): Evidently's default
``DataDriftPreset`` (its dataset verdict and its column flags) on windows of 250, 500, 1,000 and
2,000 requests, and alibi-detect's ``KSDrift`` with its defaults where it installs.
Writes ``bench/results/drift.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.venv import BENCH_DIR, VirtualEnv
from rendezvous.core.alarms import AlarmSettings
from rendezvous.core.analytics import DeploymentAnalytics
from rendezvous.core.compare import Scored
from rendezvous.core.messages import Feedback
from rendezvous.core.reference import build_reference

RESULTS = BENCH_DIR / "results"
DRIFT_VENV = VirtualEnv(BENCH_DIR / ".venv-drift", BENCH_DIR / "requirements-drift.txt")
COLUMNS = [f"f{i}" for i in range(12)]
SHIFTED = COLUMNS[:3]
REF_ROWS = 8000
BATCH = 1000  # rows handed to the statistics at once (one request = one row)
WINDOWS = (250, 500, 1000, 2000)


def canary_weights() -> np.ndarray:
    # All positive: a canary that leans on every column, as a scoring model usually does.
    return np.abs(np.random.default_rng(42).normal(size=len(COLUMNS))) / math.sqrt(len(COLUMNS))


def canary_score(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(x @ canary_weights())))


def reference(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    x = rng.normal(size=(REF_ROWS, len(COLUMNS)))
    ref = build_reference({c: x[:, i].tolist() for i, c in enumerate(COLUMNS)},
                          {"predictions": canary_score(x).tolist()})
    return x, ref


def analytics(ref: dict[str, Any]) -> DeploymentAnalytics:
    a = DeploymentAnalytics("bench", settings=AlarmSettings())
    a.set_policy(models=["champ@1", "canary@1"], champion="champ@1", canary="canary@1",
                 deadline_ms=100, references={"champ@1": ref, "canary@1": ref})
    return a


def feed(a: DeploymentAnalytics, x: np.ndarray, t_ns: int) -> None:
    a.add_inputs({c: x[:, i].tolist() for i, c in enumerate(COLUMNS)}, t_ns)
    a.add_canary_scores(canary_score(x).tolist(), (), t_ns)


def fired(a: DeploymentAnalytics, name: str) -> int:
    st = a.alarms.states.get(name)
    return st.fired if st else 0


def stationary(ref: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    a = analytics(ref)
    t0 = time.perf_counter()
    for k in range(n // BATCH):
        feed(a, rng.normal(size=(BATCH, len(COLUMNS))), k)
    alarms = fired(a, "column_drift") + fired(a, "canary_drift")
    return {"requests": n, "false_alarms": alarms, "per_million": alarms / n * 1e6,
            "per_million_95_upper": round(poisson_upper(alarms) / n * 1e6, 3),
            "seconds": round(time.perf_counter() - t0, 1),
            "designed_per_million": a.drift()["designed_false_alarms_per_million_rows"]}


def poisson_upper(k: int) -> float:
    """One-sided 95 % upper confidence bound on a Poisson mean after ``k`` events."""
    from scipy import stats

    return float(stats.chi2.ppf(0.95, 2 * (k + 1)) / 2)


def shifted(ref: dict[str, Any], trials: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    delays: dict[str, list[float]] = {"column_drift": [], "canary_drift": []}
    for _ in range(trials):
        a = analytics(ref)
        warm = 5000 + int(rng.integers(0, 500))  # the shift starts anywhere within a block
        feed(a, rng.normal(size=(warm, len(COLUMNS))), 0)
        seen = {k: fired(a, k) for k in delays}
        found: dict[str, float] = {}
        for sent in range(0, 20_000, 10):
            x = rng.normal(size=(10, len(COLUMNS)))
            x[:, : len(SHIFTED)] += 0.5
            feed(a, x, 1)
            for k in delays:
                if k not in found and fired(a, k) > seen[k]:
                    found[k] = sent + 10
            if len(found) == len(delays):
                break
        for k in delays:
            delays[k].append(found.get(k, math.inf))
    return {k: summarize(v) for k, v in delays.items()}


def summarize(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    return {"trials": len(values), "detected": len(finite),
            "median": float(np.median(finite)) if finite else None,
            "p90": float(np.percentile(finite, 90)) if finite else None,
            "max": max(finite) if finite else None}


def labels(trials: int, stationary_labels: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    scored = {"champ@1": Scored(scores=(0.9,), labels=("1",))}

    def run(a: DeploymentAnalytics, p: float, n: int, start: int) -> None:
        for i in range(n):
            label = 1 if rng.random() < p else 0
            a.add_feedback(Feedback(request_id=f"r{start + i}", deployment="bench",
                                    labels=[label], at_ns=0), scored, 0)

    delays = []
    for _ in range(trials):
        a = analytics({})
        run(a, 0.90, 3000, 0)
        before = fired(a, "accuracy_drop:champ@1")
        found = math.inf
        for k in range(0, 20_000, 50):
            run(a, 0.85, 50, 10**7 + k)
            if fired(a, "accuracy_drop:champ@1") > before:
                found = k + 50
                break
        delays.append(found)
    quiet = analytics({})
    run(quiet, 0.90, stationary_labels, 0)
    false = fired(quiet, "accuracy_drop:champ@1")
    return {"labels_until_alarm": summarize(delays),
            "stationary_labels": stationary_labels, "false_alarms": false,
            "per_million_95_upper": round(poisson_upper(false) / stationary_labels * 1e6, 3)}


def baselines(ref_x: np.ndarray, windows_per_size: int, seed: int,
              out_dir: Path) -> dict[str, Any]:
    """Evidently (and alibi-detect) on the same reference, in their own environment."""
    try:
        python = DRIFT_VENV.ensure(log=print)
    except subprocess.CalledProcessError as exc:
        return {"error": f"bench/.venv-drift did not install: {exc}"}
    has_alibi = subprocess.run([str(python), "-c", "import alibi_detect"],
                               capture_output=True, check=False).returncode == 0
    if not has_alibi:  # optional: where it does not install, the table says so
        subprocess.run([str(python), "-m", "pip", "install", "-q", "alibi-detect",
                        "pandas<3"], capture_output=True, check=False)
    data = out_dir / "drift-data.npz"
    np.savez(data, ref=ref_x)
    proc = subprocess.run(
        [str(python), "-m", "bench.drift_baselines", str(data), str(windows_per_size),
         str(seed), ",".join(map(str, WINDOWS)), str(len(SHIFTED))],
        capture_output=True, text=True, cwd=BENCH_DIR.parent, check=False)
    data.unlink(missing_ok=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def markdown(doc: dict[str, Any]) -> str:
    s, sh, lab = doc["stationary"], doc["shift"], doc["labels"]
    lines = [
        "# Drift and accuracy alarms", "",
        f"`{doc['command']}` on {doc['machine']}, {doc['date']}.", "",
        "12 numeric columns, 8,000-row training reference, default alarm settings "
        "(blocks of 500 requests, designed false-alarm rate "
        f"{s['designed_per_million']:g} per million requests).", "",
        "| measure | Rendezvous | goal |", "|---|---|---|",
        f"| false drift alarms, stationary | {s['false_alarms']} in {s['requests']:,} requests "
        f"({s['per_million']:.2f} per million; 95 % upper bound {s['per_million_95_upper']:g})"
        " | ≤ 1 per million |",
        f"| requests until column-drift alarm, 0.5 sigma on 3 of 12 columns | median "
        f"{sh['column_drift']['median']:.0f}, p90 {sh['column_drift']['p90']:.0f}, max "
        f"{sh['column_drift']['max']:.0f} ({sh['column_drift']['detected']}/"
        f"{sh['column_drift']['trials']} detected) | ≤ 1,000 |",
        f"| requests until canary-drift alarm (same shift) | median "
        f"{fmt(sh['canary_drift']['median'])}, p90 {fmt(sh['canary_drift']['p90'])} "
        f"({sh['canary_drift']['detected']}/{sh['canary_drift']['trials']} detected) | - |",
        f"| labelled requests until accuracy alarm, 90 % -> 85 % | median "
        f"{fmt(lab['labels_until_alarm']['median'])}, p90 "
        f"{fmt(lab['labels_until_alarm']['p90'])} ({lab['labels_until_alarm']['detected']}/"
        f"{lab['labels_until_alarm']['trials']} detected; baseline: the first 2,000 labels) "
        "| - |",
        f"| false accuracy alarms, stationary labels | {lab['false_alarms']} in "
        f"{lab['stationary_labels']:,} labels | - |", "",
    ]
    base = doc["baselines"]
    if "error" in base:
        lines += [f"Baselines did not run: `{base['error'][:300]}`", ""]
        return "\n".join(lines)
    lines += [f"## Beside it: Evidently {base.get('evidently_version', '?')} "
              "`DataDriftPreset` (defaults)", "",
              "Share of windows flagged, same reference, "
              f"{base['windows_per_size']} windows per size:", "",
              "| window (requests) | dataset drift, stationary | dataset drift, shifted | "
              "any column flagged, stationary | any column flagged, shifted |",
              "|---|---|---|---|---|"]
    for row in base["evidently"]:
        lines.append(f"| {row['window']:,} | {pct(row['dataset_stationary'])} | "
                     f"{pct(row['dataset_shifted'])} | {pct(row['columns_stationary'])} | "
                     f"{pct(row['columns_shifted'])} |")
    if base.get("alibi"):
        lines += ["", f"alibi-detect {base.get('alibi_version', '?')} `KSDrift` (defaults: "
                  "p_val 0.05, Bonferroni over features), share of windows flagged:", "",
                  "| window (requests) | stationary | shifted |", "|---|---|---|"]
        for row in base["alibi"]:
            lines.append(f"| {row['window']:,} | {pct(row['stationary'])} | "
                         f"{pct(row['shifted'])} |")
    else:
        lines += ["", f"alibi-detect: {base.get('alibi_error', 'not installed')}"]
    lines += ["", "A flagged stationary window is a false alarm: at one window per "
              "W requests, a share f of flagged stationary windows is f x 10^6 / W false "
              "alarms per million requests.", ""]
    return "\n".join(lines)


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def pct(v: float) -> str:
    return f"{100 * v:.0f} %"


def plot(doc: dict[str, Any], path: Path) -> None:
    """drift.png, drawn in bench/.venv-drift (it has matplotlib; the project does not)."""
    try:
        python = DRIFT_VENV.ensure(log=print)
    except subprocess.CalledProcessError:
        return
    data = path.with_suffix(".plot.json")
    data.write_text(json.dumps(doc))
    subprocess.run([str(python), "-m", "bench.drift_baselines", "--plot", str(data), str(path)],
                   cwd=BENCH_DIR.parent, check=False)
    data.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000_000,
                        help="stationary requests for the false-alarm rate")
    parser.add_argument("--trials", type=int, default=50, help="shift and label trials")
    parser.add_argument("--labels", type=int, default=1_000_000,
                        help="stationary labels for the false accuracy alarms")
    parser.add_argument("--windows", type=int, default=40,
                        help="baseline windows per size and scenario")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ref_x, ref = reference(np.random.default_rng(args.seed))
    print("stationary …", flush=True)
    st = stationary(ref, args.requests, args.seed + 1)
    print(st, "\nshift …", flush=True)
    sh = shifted(ref, args.trials, args.seed + 2)
    print(sh, "\nlabels …", flush=True)
    lab = labels(args.trials, args.labels, args.seed + 3)
    print(lab, "\nbaselines …", flush=True)
    base = {"skipped": True, "error": "--no-baselines"} if args.no_baselines else \
        baselines(ref_x, args.windows, args.seed + 4, args.out)
    from bench.machine import machine_info

    machine = machine_info([])
    doc = {"command": "python -m bench.drift " + " ".join(argv or sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"),
           "machine": f"{machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores",
           "stationary": st, "shift": sh, "labels": lab, "baselines": base}
    (args.out / "drift.json").write_text(json.dumps(doc, indent=2))
    (args.out / "drift.md").write_text(markdown(doc))
    plot(doc, args.out / "drift.png")
    print(markdown(doc))


def render(path: Path) -> None:
    """Rewrite drift.md and drift.png from a drift.json (e.g. after changing the report)."""
    doc = json.loads(path.read_text())
    for part in (doc["stationary"], doc["labels"]):
        k = part["false_alarms"]
        n = part.get("requests", part.get("stationary_labels"))
        part["per_million_95_upper"] = round(poisson_upper(k) / n * 1e6, 3)
    path.write_text(json.dumps(doc, indent=2))
    path.with_suffix(".md").write_text(markdown(doc))
    plot(doc, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
