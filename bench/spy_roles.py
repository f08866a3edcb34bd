"""Where a serving process's time goes, role by role, from a py-spy recording:
``python -m bench.spy_roles FILE [FILE ...] [--out MD]``.

``FILE`` holds folded stacks (``py-spy record --format raw``), such as ``bench.analytics_serving_cpu
--py-spy FILE.txt`` writes while it loads ``rendezvous-4`` (it samples only while a thread holds
the GIL, so idle time is not counted). Each sample is given to the role of the outermost frame
of the stack that belongs to one: the HTTP edge, the workers and their model hosts' sockets, the
rendezvous server, the archive writers (decoy and scorekeeper), the monitor (meta-analytics),
the stream log. Samples in none of them (the event loop's own code, asyncio) are ``other``.
Prints the share of each role, a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: Role -> the function-name prefixes (``Class.method`` as py-spy names them) of its frames.
#: The first role found from the outermost frame in wins: a worker's append to the stream log
#: is the worker's.
ROLES: dict[str, tuple[str, ...]] = {
    "HTTP edge (proxy, middleware, uvicorn)": (
        "RequestResponseCycle.", "HttpToolsProtocol.", "_Hardened.", "Proxy.", "HostCheck.",
        "BodyTimeout.", "infer ", "send_reply ", "_OneSend.", "invocations "),
    "workers and model hosts' sockets": ("Worker.", "ModelHost.", "ThreadHost."),
    "rendezvous server": ("RendezvousServer.",),
    "archive writers (decoy, scorekeeper)": ("ArchiveWriter.", "Decoy.", "Scorekeeper."),
    "monitor (meta-analytics)": ("Monitor.",),
    "stream log (writer thread, consumers)": ("Writer.", "EmbeddedStream.",
                                              "EmbeddedConsumer."),
}
OTHER = "other (event loop, asyncio)"


def role_of(frames: list[str]) -> str:
    """The role of one stack (outermost frame first).

    >>> role_of(["run (uvloop/__init__.py:92)", "Monitor._pump (roles/monitor.py:285)",
    ...          "EmbeddedConsumer.__anext__ (streams/embedded/log.py:160)"])
    'monitor (meta-analytics)'
    >>> role_of(["Runner.run (asyncio/runners.py:118)"])
    'other (event loop, asyncio)'
    """
    for frame in frames:
        for role, prefixes in ROLES.items():
            if frame.startswith(prefixes):
                return role
    return OTHER


def shares(lines: Iterable[str]) -> tuple[Counter[str], int]:
    """Samples per role, and in all, from folded-stack lines (``frame;frame;... COUNT``)."""
    per: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        per[role_of(stack.split(";"))] += int(count)
        total += int(count)
    return per, total


def table(per: Counter[str], total: int) -> str:
    rows = [f"| {role} | {100 * n / total:.1f} % |" for role, n in per.most_common()]
    return "\n".join(["| role | share of GIL-held samples |", "|---|---|", *rows,
                      f"| in all | {total} samples |"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", type=Path, nargs="+", help="py-spy raw (folded) stacks")
    ap.add_argument("--out", type=Path, help="also write the table here, with the command")
    args = ap.parse_args(argv)
    per: Counter[str] = Counter()
    total = 0
    for f in args.files:
        p, t = shares(f.read_text().splitlines())
        per += p
        total += t
    if not total:
        print(f"no samples in {', '.join(map(str, args.files))}", file=sys.stderr)
        return 1
    text = table(per, total)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python -m bench.spy_roles " + " ".join(sys.argv[1:])
        args.out.write_text(f"# Where a serving process's time goes, by role\n\n"
                            f"Command: `{command}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
