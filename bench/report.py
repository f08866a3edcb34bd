"""serving.json, serving.md and serving.png from the measured rows.

The Markdown, the ratios and the findings are pure functions of the document; only the
``write_*`` functions touch files (each written to a temporary name, then renamed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]

RATIO_LEVEL = 32
#: A p50 in this band at concurrency 1 is the mark of TCP delayed ACK, not of slow scoring.
DELAYED_ACK_BAND_MS = (38.0, 48.0)
RENDEZVOUS_4, RENDEZVOUS_1, FASTAPI = "rendezvous-4", "rendezvous-1", "fastapi"
COLUMNS = ["contender", "concurrency", "rps", "p50_ms", "p99_ms", "p999_ms", "errors",
           "peak_rss_mb", "cpu_ms_per_req", "cores_busy"]


def _at(results: Sequence[Row], contender: str, level: int) -> Row | None:
    for row in results:
        if row["contender"] == contender and row["concurrency"] == level:
            return row
    return None


#: The three contenders the issue's targets name; others (fastapi-async) are reported too.
TARGET_OTHERS = ("mlflow", "mlserver", "fastapi")
#: Not a contender: a server that answers a constant (``bench.floor_app``), how far the HTTP
#: stack alone goes on the machine; compared with the anchors, never among them.
FLOOR = "floor"


def _others(results: Sequence[Row], level: int, names: Sequence[str] | None = None) -> list[Row]:
    """The third-party contenders' rows at ``level`` (Rendezvous is compared against them),
    all of them or those in ``names``."""
    return [r for r in results
            if r["concurrency"] == level and not r["contender"].startswith("rendezvous")
            and r["contender"] != FLOOR and (names is None or r["contender"] in names)]


def _versus(row: Row, others: list[Row], label: str,
            notes: tuple[str, str] = ("", "")) -> list[str]:
    """``row`` against the best throughput and the lowest p99 of ``others``; ``notes`` end
    the two lines' parentheses."""
    best = max(others, key=lambda r: r["rps"])
    low = min(others, key=lambda r: r["p99_ms"])
    name = row["contender"]
    return [
        f"- **{name} throughput / best of {label} at c={RATIO_LEVEL}**: "
        f"{row['rps'] / best['rps']:.2f}x ({row['rps']:.0f} vs {best['contender']} "
        f"{best['rps']:.0f} req/s{notes[0]})",
        f"- **{name} p99 / lowest p99 of {label} at c={RATIO_LEVEL}**: "
        f"{row['p99_ms'] / low['p99_ms']:.2f}x ({row['p99_ms']:.1f} ms vs {low['contender']} "
        f"{low['p99_ms']:.1f} ms, {row['p99_ms'] - low['p99_ms']:+.1f} ms{notes[1]})",
    ]


def ratios(results: Sequence[Row]) -> list[str]:
    """The headline comparisons, one Markdown bullet each; 'n/a' where a row is missing."""
    lines = []
    r4 = _at(results, RENDEZVOUS_4, RATIO_LEVEL)
    named = _others(results, RATIO_LEVEL, TARGET_OTHERS)
    every = _others(results, RATIO_LEVEL)
    if r4 and named:
        lines += _versus(r4, named, "mlflow, mlserver, fastapi")
    if r4 and every and len(every) > len(named):
        lines += _versus(r4, every, "every non-Rendezvous contender")
    if not (r4 and every):
        lines.append(f"- {RENDEZVOUS_4} vs others at c={RATIO_LEVEL}: n/a (needs {RENDEZVOUS_4} "
                     f"and at least one non-Rendezvous contender at c={RATIO_LEVEL})")
    fa = _at(results, FASTAPI, 1)
    for name in (RENDEZVOUS_1, RENDEZVOUS_4):
        r = _at(results, name, 1)
        if r and fa:
            lines.append(
                f"- **{name} p50 - {FASTAPI} p50 at c=1**: "
                f"{r['p50_ms'] - fa['p50_ms']:+.2f} ms ({r['p50_ms']:.2f} vs "
                f"{fa['p50_ms']:.2f} ms)")
        elif r or name == RENDEZVOUS_1:
            lines.append(f"- {name} p50 - {FASTAPI} p50 at c=1: n/a (needs both at c=1)")
    lines += floor(results)
    lines += scaleout(results)
    lines += client_paths(results)
    return lines


def floor(results: Sequence[Row]) -> list[str]:
    """The floor (no model, no framework) against the anchors the targets name, at c=32,
    beside the targets set for ``rendezvous-4``: how far a server that does nothing gets past
    them."""
    f, named = _at(results, FLOOR, RATIO_LEVEL), _others(results, RATIO_LEVEL, TARGET_OTHERS)
    if f is None or not named:
        return []
    return _versus(f, named, "mlflow, mlserver, fastapi",
                   (f"; the target for {RENDEZVOUS_4} is 2x",
                    f"; the target for {RENDEZVOUS_4} is at most 0.33x"))


#: The same deployment as ``rendezvous-1`` reached through another client protocol.
CLIENT_PATHS = ("rendezvous-1-mlflow", "rendezvous-1-grpc")


def client_paths(results: Sequence[Row]) -> list[str]:
    """Each other client path of ``rendezvous-1`` against its OIP JSON path: throughput and
    p99 at c=32, p50 at c=1."""
    lines = []
    for name in CLIENT_PATHS:
        for level, what in ((RATIO_LEVEL, "rps"), (RATIO_LEVEL, "p99_ms"), (1, "p50_ms")):
            path, base = _at(results, name, level), _at(results, RENDEZVOUS_1, level)
            if path is None or base is None or not base[what]:
                continue
            label = {"rps": "throughput", "p99_ms": "p99", "p50_ms": "p50"}[what]
            lines.append(f"- **{name} {label} / {RENDEZVOUS_1} {label} at c={level}**: "
                         f"{path[what] / base[what]:.2f}x ({path[what]:.1f} vs "
                         f"{base[what]:.1f})")
    return lines


def scaleout(results: Sequence[Row]) -> list[str]:
    """The NATS scale-out curve: throughput per worker-process count, relative to one."""
    curve = sorted(((int(r["contender"].rsplit("-w", 1)[1]), r) for r in results
                    if r["contender"].startswith("rendezvous-nats-w")
                    and r["concurrency"] == RATIO_LEVEL), key=lambda t: t[0])
    if not curve:
        return []
    base = curve[0][1]["rps"] or 1.0
    points = ", ".join(f"{n} worker process(es) per model {r['rps']:.0f} req/s "
                       f"({r['rps'] / base:.2f}x, p99 {r['p99_ms']:.1f} ms)" for n, r in curve)
    return [f"- **NATS scale-out at c={RATIO_LEVEL}**: {points}"]


def findings(results: Sequence[Row], runs: Sequence[Row] = ()) -> list[str]:
    """Things in the numbers a reader should not misread, one Markdown bullet each.

    ``runs`` (serving.json's detail rows) adds the kinds of errors where there were any.
    """
    out = []
    low, high = DELAYED_ACK_BAND_MS
    for row in results:
        if row["concurrency"] == 1 and low <= row["p50_ms"] <= high:
            out.append(
                f"- **{row['contender']}: TCP delayed-ACK artifact at c=1.** p50 is "
                f"{row['p50_ms']:.1f} ms ({row['rps']:.0f} req/s), in the {low:.0f}-{high:.0f} ms "
                "band of Linux's 40 ms delayed ACK: the response leaves in two writes and "
                "the second waits for the client's ACK of the first, which the client delays, "
                "so one connection stalls ~40 ms per request whatever the model costs. It is "
                "a transport artifact (seen with `uvicorn --workers 2`), not scoring time; "
                "the higher-concurrency rows show the server's real capacity.")
    kinds = {(r["contender"], r["concurrency"]): r.get("errors_by_kind", {}) for r in runs}
    for row in results:
        n = row["errors"]
        if n:
            by_kind = kinds.get((row["contender"], row["concurrency"])) or {}
            detail = ", ".join(f"{k} {v}" for k, v in by_kind.items()) or (
                "non-2xx, socket errors or timeouts")
            out.append(f"- **{row['contender']} at c={row['concurrency']}: {n} "
                       f"error{'s' if n != 1 else ''}** ({detail}; wrk's `status` counts "
                       "answers >= 400); its throughput counts successful responses only.")
    return out


def _fmt(column: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.0f}" if column in ("rps", "peak_rss_mb") else f"{value:.2f}"
    return str(value)


def table(results: Sequence[Row]) -> str:
    """The results as one Markdown table."""
    head = ["contender", "c", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "peak RSS MB",
            "CPU ms/req", "cores busy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results:  # results written before the CPU columns existed show n/a there
        lines.append("| " + " | ".join(_fmt(c, row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    """serving.md: setup, table, ratios, findings, failures."""
    m, s = doc["machine"], doc["settings"]
    parts = [
        "# Serving benchmark",
        "",
        f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
        f"{m['os']}. Load: {m['load_generator']}, {s['wrk_threads']} thread(s), "
        f"{s['duration_s']:g} s per level after a {s['warmup_s']:g} s warm-up; "
        f"{s.get('workers', 2)} worker processes per contender; "
        "every server on 127.0.0.1 with OMP_NUM_THREADS=1, sharing the cores with wrk. "
        "req/s counts successful responses; errors are non-2xx answers, socket errors and "
        "timeouts; peak RSS sums the server's whole process tree during each level, and CPU "
        "ms/req and cores busy are the CPU time that tree used during the level, per request "
        "and per second (wrk's own is not in them).",
        "",
        table(doc["results"]),
        "",
        "## Ratios",
        "",
        *ratios(doc["results"]),
        "",
        "## Findings",
        "",
        *(findings(doc["results"], doc.get("runs", ())) or ["- Nothing unusual detected."]),
    ]
    if doc.get("failures"):
        parts += ["", "## Did not run", ""]
        parts += [f"- **{f['contender']}**: {f['error'].splitlines()[0]}" for f in doc["failures"]]
    parts += ["", "## Contenders", ""]
    parts += [f"- `{name}`: {text}" for name, text in s["contenders"].items()]
    return "\n".join(parts) + "\n"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_json(doc: dict[str, Any], path: Path) -> None:
    _atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    _atomic_write(path, markdown(doc).encode())


def write_results(out: Path, stem: str, doc: dict[str, Any], text: str,
                  plot: Callable[[Path], object]) -> None:
    """A benchmark's committed results: ``<out>/<stem>.json`` (``doc``), ``.md`` (``text``)
    and ``.png`` (what ``plot`` draws at that path)."""
    write_json(doc, out / f"{stem}.json")
    _atomic_write(out / f"{stem}.md", text.encode())
    plot(out / f"{stem}.png")


def write_png(results: Sequence[Row], path: Path) -> bool:
    """Throughput and p99 against concurrency, one line per contender; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    names = list(dict.fromkeys(r["contender"] for r in results))
    levels = sorted({r["concurrency"] for r in results})
    for name in names:
        rows = sorted((r for r in results if r["contender"] == name),
                      key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["rps"] for r in rows], marker="o", label=name)
        right.plot(xs, [r["p99_ms"] for r in rows], marker="o", label=name)
    for ax, title, ylabel in ((left, "Throughput", "requests / s"),
                              (right, "p99 latency", "ms (log scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.set_ylim(bottom=0)
    left.legend(fontsize="small")
    tmp = path.with_name(path.name + ".tmp.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return True
