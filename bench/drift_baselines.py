"""Evidently's ``DataDriftPreset`` and alibi-detect's ``KSDrift``, with their defaults, on the
drift benchmark's data. Runs inside ``bench/.venv-drift`` (``bench/drift.py`` starts it) and
prints one JSON line: the share of windows each flags, stationary and shifted.

Usage: python -m bench.drift_baselines DATA.npz WINDOWS_PER_SIZE SEED SIZES N_SHIFTED
       python -m bench.drift_baselines --plot DRIFT.json OUT.png
"""

from __future__ import annotations

import json
import sys
import warnings
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")


def evidently_flags(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[bool, bool]:
    """(dataset drift verdict, any column flagged) from ``DataDriftPreset()``."""
    try:  # evidently >= 0.7
        from evidently import Report
        from evidently.presets import DataDriftPreset

        snap = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
        for m in snap.dict()["metrics"]:
            if m.get("metric_name", m.get("metric_id", "")).startswith("DriftedColumnsCount"):
                share, count = m["value"]["share"], m["value"]["count"]
                return share >= 0.5, count > 0
        raise RuntimeError("no DriftedColumnsCount in the report")
    except ImportError:  # evidently 0.4 - 0.6
        from evidently.metric_preset import DataDriftPreset as Legacy
        from evidently.report import Report as LegacyReport

        report = LegacyReport(metrics=[Legacy()])
        report.run(reference_data=ref, current_data=cur)
        result = report.as_dict()["metrics"][0]["result"]
        return bool(result["dataset_drift"]), result["number_of_drifted_columns"] > 0


def plot(doc: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    base = doc["baselines"]
    if "evidently" in base:
        w = [r["window"] for r in base["evidently"]]
        left.plot(w, [r["columns_stationary"] for r in base["evidently"]], "o-",
                  label="Evidently column flags, stationary")
        left.plot(w, [r["dataset_shifted"] for r in base["evidently"]], "s-",
                  label="Evidently dataset verdict, shifted (detections)")
        if base.get("alibi"):
            left.plot(w, [r["stationary"] for r in base["alibi"]], "^-",
                      label="alibi-detect KSDrift, stationary")
    fa = doc["stationary"]["per_million"]
    left.axhline(fa * 500 / 1e6, color="k", ls="--",
                 label=f"Rendezvous, per 500-request block ({fa:.2f}/million)")
    left.set_xscale("log")
    left.set_xlabel("window (requests)")
    left.set_ylabel("share of windows flagged")
    left.legend(fontsize=7)
    left.set_title("False alarms on stationary traffic")
    sh = doc["shift"]
    names = ["column drift", "canary drift", "accuracy (labels)"]
    meds = [sh["column_drift"]["median"] or 0, sh["canary_drift"]["median"] or 0,
            doc["labels"]["labels_until_alarm"]["median"] or 0]
    p90s = [sh["column_drift"]["p90"] or 0, sh["canary_drift"]["p90"] or 0,
            doc["labels"]["labels_until_alarm"]["p90"] or 0]
    right.bar(names, meds, label="median")
    right.scatter(names, p90s, color="k", zorder=3, label="p90")
    right.axhline(1000, color="r", ls="--", label="goal for column drift")
    right.set_ylabel("requests (labels) until the alarm")
    right.set_title("Time to detection")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if sys.argv[1] == "--plot":  # python -m bench.drift_baselines --plot DOC.json OUT.png
        with open(sys.argv[2]) as f:
            plot(json.load(f), sys.argv[3])
        return
    data, per_size, seed, sizes, n_shifted = sys.argv[1:6]
    ref_x = np.load(data)["ref"]
    cols = [f"f{i}" for i in range(ref_x.shape[1])]
    ref = pd.DataFrame(ref_x, columns=cols)
    rng = np.random.default_rng(int(seed))
    out: dict[str, Any] = {"windows_per_size": int(per_size), "evidently": [], "alibi": []}
    out["evidently_version"] = version("evidently")
    try:
        from alibi_detect.cd import KSDrift

        ks = KSDrift(ref_x.astype(np.float32))
        out["alibi_version"] = version("alibi-detect")
    except Exception as exc:
        ks = None
        out["alibi_error"] = f"did not load: {type(exc).__name__}: {str(exc)[:200]}"
    for size in map(int, sizes.split(",")):
        counts = {"dataset_stationary": 0, "dataset_shifted": 0, "columns_stationary": 0,
                  "columns_shifted": 0}
        alibi = {"stationary": 0, "shifted": 0}
        for _ in range(int(per_size)):
            for kind in ("stationary", "shifted"):
                x = rng.normal(size=(size, len(cols)))
                if kind == "shifted":
                    x[:, : int(n_shifted)] += 0.5
                dataset, column = evidently_flags(ref, pd.DataFrame(x, columns=cols))
                counts[f"dataset_{kind}"] += dataset
                counts[f"columns_{kind}"] += column
                if ks is not None:
                    alibi[kind] += int(ks.predict(x.astype(np.float32))["data"]["is_drift"])
        n = int(per_size)
        out["evidently"].append({"window": size, **{k: v / n for k, v in counts.items()}})
        if ks is not None:
            out["alibi"].append({"window": size, **{k: v / n for k, v in alibi.items()}})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
