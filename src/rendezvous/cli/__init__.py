"""The ``rendezvous`` command: a thin shell over the library (one call plus printing each).

One module per group of commands; importing them registers their commands on ``app``.
"""

from __future__ import annotations

import rendezvous.cli.analytics  # noqa: F401  (registers compare, drift, alarms, feedback)
from rendezvous.cli import deployments, models, serve, status  # noqa: F401  (registers commands)
from rendezvous.cli.common import app, err
from rendezvous.errors import RendezvousError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except RendezvousError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
