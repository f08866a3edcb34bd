"""The ``rendezvous`` command: a thin shell over the library (one call plus printing each).

One module per group of commands; importing them registers their commands on ``app``.
"""

from __future__ import annotations

from rich.markup import escape

from rendezvous.cli import (  # noqa: F401  (registers commands)
    analysis,
    analytics,
    deployments,
    models,
    registry,
    serve,
    status,
)
from rendezvous.cli.common import app, err
from rendezvous.errors import RendezvousError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except RendezvousError as exc:
        # escape: messages hold brackets ("pip install 'rendezvous-ml[onnx]'"), not markup
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
