"""Model cards: one page per version saying what it is for, what it takes, what it was trained
on, how it scored, where it came from and where it is deployed.

``markdown(...)`` is pure (card data in, text out); ``render`` gathers the data from a registry.
HTML is the same content through a small Markdown subset renderer (headings, tables, lists,
paragraphs), so a card needs no extra package.
"""

from __future__ import annotations

import asyncio
import html
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rendezvous.errors import ConfigError

if TYPE_CHECKING:
    from rendezvous.registry import ModelVersion, Registry


@dataclass(frozen=True)
class Deployed:
    """One deployment that used the version: its current role there, if still in it."""

    deployment: str
    role: str | None  # None: no longer in the current policy
    first_policy: int
    last_policy: int


@dataclass(frozen=True)
class CardData:
    version: ModelVersion
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    deployed: list[Deployed] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # deployment -> model stats


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(card: CardData) -> str:
    """The card as Markdown."""
    mv = card.version
    tags = card.tags
    lines = [f"# Model card: {mv.ref}", ""]
    lines += [mv.description or "_No description; set one with `rendezvous models describe`._",
              ""]
    lines += ["## Intended use", "", tags.get("intended_use", "_Not stated; tag the model "
                                             "`intended_use=...`._"), ""]
    if "limitations" in tags:
        lines += ["## Limitations", "", tags["limitations"], ""]
    lines += ["## Model", ""]
    lines += _table(("field", "value"), [
        ("flavor", mv.flavor),
        ("class", mv.flavor_meta.get("class", mv.flavor_meta.get("objective", ""))),
        ("artifact", f"sha256:{mv.digest}"),
        ("registered", f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(mv.created_at))} "
                       f"by {mv.created_by}"),
        ("aliases", ", ".join(card.aliases) or "none"),
        ("tags", ", ".join(f"{k}={v}" for k, v in tags.items()) or "none"),
    ])
    lines += ["## Inputs (signature)", ""]
    lines += _table(("column", "type"),
                    [(c["name"], c["datatype"]) for c in mv.signature["inputs"]])
    summary = {k: v for k, v in mv.data_summary.items() if k != "example_rows"}
    lines += ["## Training data", ""]
    if mv.data_fingerprint:
        lines += [f"Fingerprint `sha256:{mv.data_fingerprint}`, {summary.get('n_rows', '?')} "
                  "rows.", ""]
        if "mean" in summary:
            lines += _table(("column", "mean", "std"), [
                (c["name"], m, s) for c, m, s in zip(mv.signature["inputs"], summary["mean"],
                                                     summary["std"], strict=False)])
    else:
        lines += ["_No training data recorded at registration._", ""]
    lines += ["## Metrics", ""]
    lines += (_table(("metric", "value"), sorted(mv.metrics.items())) if mv.metrics
              else ["_None recorded._", ""])
    if mv.params:
        lines += ["## Parameters", ""]
        lines += _table(("parameter", "value"), sorted(mv.params.items()))
    env = mv.environment
    code = mv.code_version or "unknown"
    if mv.code_dirty:
        code += " (with uncommitted changes)"
    lines += ["## Lineage", ""]
    lines += _table(("field", "value"), [
        ("code version", code),
        ("parent version", mv.parent or "none"),
        ("external run", mv.run_ref or "none"),
        ("python", env.get("python", "")),
        ("libraries", ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())),
        ("trusted types named at registration",
         ", ".join(mv.flavor_meta.get("user_trusted", [])) or "none"),
    ])
    lines += ["## Deployments", ""]
    if card.deployed:
        lines += _table(("deployment", "role now", "policy versions"), [
            (d.deployment, d.role or "retired", f"{d.first_policy}..{d.last_policy}")
            for d in card.deployed])
        if card.live:
            lines += ["Live figures from the recorded results:", ""]
            lines += _table(
                ("deployment", "requests", "on time", "late", "missing", "error", "chosen",
                 "p50 ms", "p99 ms"),
                [(dep, s["requests"], s["on_time"], s["late"], s["missing"], s["error"],
                  s["chosen"], s["latency_ms"].get("p50"), s["latency_ms"].get("p99"))
                 for dep, s in sorted(card.live.items())])
        lines += ["More: `rendezvous status DEPLOYMENT` and the monitor's dashboard.", ""]
    else:
        lines += ["_Never deployed._", ""]
    return "\n".join(lines)


def to_html(md: str, *, title: str) -> str:
    """A standalone HTML page from the Markdown subset ``markdown`` writes."""
    body: list[str] = []
    rows: list[list[str]] = []

    def flush_table() -> None:
        if rows:
            head, *rest = rows
            body.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head)
                        + "</tr></thead><tbody>" + "".join(
                            "<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                            for r in rest) + "</tbody></table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            if not line.startswith("|---"):
                cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
                rows.append([_inline(c) for c in cells])
            continue
        flush_table()
        if line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _inline(text: str) -> str:
    out = html.escape(text.strip())
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    if out.startswith("_") and out.endswith("_"):
        out = f"<em>{out[1:-1]}</em>"
    return out


def _deployed(reg: Registry, ref: str) -> list[Deployed]:
    found = []
    for dep in reg.deployments():
        history = reg.policy_history(dep)
        used = [rec.version for rec in history
                if any(m.get("model") == ref for m in rec.body.get("models", []))]
        if not used:
            continue
        current = reg.policy(dep)[1].body.get("models", [])
        role = next((str(m.get("role")) for m in current if m.get("model") == ref), None)
        found.append(Deployed(dep, role, min(used), max(used)))
    return found


def _live(reg: Registry, ref: str, deployed: list[Deployed]) -> dict[str, dict[str, Any]]:
    """This version's figures per deployment from the local results log, when there is one
    (a card asked for inside an event loop, or on a machine without the log, has none)."""
    from rendezvous.streams.embedded.log import DEFAULT_LOG

    if not deployed or not (reg.home / DEFAULT_LOG).exists():
        return {}
    try:
        asyncio.get_running_loop()
        return {}
    except RuntimeError:
        pass
    from rendezvous.roles.monitor import stats_from_log

    live = {}
    for d in deployed:
        stats = asyncio.run(stats_from_log(reg.home, d.deployment)).models.get(ref)
        if stats is not None:
            live[d.deployment] = stats.to_dict()
    return live


def render(reg: Registry, mv: ModelVersion, *, fmt: str = "md") -> str:
    """The card of ``mv`` in ``fmt`` ("md" or "html")."""
    if fmt not in ("md", "html"):
        raise ConfigError(f"unknown card format {fmt!r}; use md or html")
    aliases = [a for a, v in reg.store.aliases_of(mv.name).items() if v == mv.version]
    deployed = _deployed(reg, mv.ref)
    md = markdown(CardData(mv, reg.tags(mv.ref), sorted(aliases), deployed,
                           _live(reg, mv.ref, deployed)))
    return md if fmt == "md" else to_html(md, title=f"Model card: {mv.ref}")
