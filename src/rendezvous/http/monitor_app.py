"""The monitor's own HTTP endpoint, for when it runs as its own process (``--role monitor``).

Read-only: ``/v1/deployments/{d}/status`` (the same document the all-in-one server serves),
the analytics documents (``…/compare|drift|accuracy|alarms|windows``) and ``/dashboard``,
``/metrics`` (Prometheus), ``/v2/health/live|ready`` and ``/v1/deployments``. The server's
lifecycle is the caller's: this app only reads it.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import msgspec

from rendezvous.errors import NotFoundError, RendezvousError
from rendezvous.http.analytics import AnalyticsHandlers
from rendezvous.http.errors import error_body
from rendezvous.http.metrics import ProxyMetrics
from rendezvous.http.reply import send_reply

if TYPE_CHECKING:
    from rendezvous.hosting.runtime import Server

__all__ = ["MonitorApp"]

log = logging.getLogger(__name__)

_JSON = [(b"content-type", b"application/json")]
_STATUS = re.compile(r"/v1/deployments/(?P<d>[^/]+)/status")


class MonitorApp:
    """ASGI app over a started ``Server`` that runs the monitor role."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.metrics = ProxyMetrics(server)
        self.analytics = AnalyticsHandlers(server, lambda *reply: reply)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, body, headers = await self._answer(scope["method"], scope["path"])
        await send_reply(send, status, body, headers)

    async def _answer(self, method: str, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if method != "GET":
            return 405, msgspec.json.encode({"error": f"{method} is not allowed; use GET",
                                             "code": "method_not_allowed"}), list(_JSON)
        try:
            if path == "/v2/health/live":
                return 200, b'{"live":true}', list(_JSON)
            if path == "/v2/health/ready":
                ok = self.server.ready
                return (200 if ok else 503), msgspec.json.encode({"ready": ok}), list(_JSON)
            if path == "/v1/deployments":
                listing = {"deployments": sorted(self.server.runtimes)}
                return 200, msgspec.json.encode(listing), list(_JSON)
            if path == "/metrics":
                text, ctype = await self.metrics.render()
                return 200, text, [(b"content-type", ctype.encode())]
            found = await self.analytics.answer_get(path)  # compare, drift, …, /dashboard
            if found is not None:
                return found
            match = _STATUS.fullmatch(path)
            if match is None:
                raise NotFoundError("path", path, "the monitor serves /v1/deployments/{d}/status"
                                    "|compare|drift|accuracy|alarms|windows, /dashboard, "
                                    "/metrics and /v2/health/live|ready")
            name = match["d"]
            if name not in self.server.runtimes:
                known = ", ".join(sorted(self.server.runtimes)) or "none"
                raise NotFoundError("deployment", name, f"this monitor watches: {known}")
            return 200, msgspec.json.encode(self.server.status(name)), list(_JSON)
        except RendezvousError as exc:
            status, body, extra = error_body(exc)
            return status, body, [*_JSON, *extra]
