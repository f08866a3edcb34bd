"""HTTP concerns as small ASGI middlewares, composed in one list (``harden``).

- ``HostCheck``: the ``Host`` header must name the address the server binds to (or a name the
  operator allows), so a web page cannot drive a loopback server through DNS rebinding.
- ``BearerToken``: inference and feedback need ``Authorization: Bearer <token>`` when
  ``RENDEZVOUS_INFER_TOKEN`` is set.

Each answers its own refusals with the JSON error body every endpoint uses.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from rendezvous import config
from rendezvous.errors import AuthError, RendezvousError
from rendezvous.http.errors import error_body
from rendezvous.http.reply import send_reply

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain"})
# Paths that run models: what RENDEZVOUS_INFER_TOKEN protects.
INFERENCE_PATH = re.compile(r"/v2/models/[^/]+/infer|/v1/deployments/[^/]+/(predict|feedback)"
                            r"|/invocations")


async def _reply(send: Send, status: int, body: bytes,
                 headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_reply(send, status, body, [(b"content-type", b"application/json"), *headers])


async def _refuse(send: Send, exc: RendezvousError) -> None:
    status, body, headers = error_body(exc)
    await _reply(send, status, body, headers)


def allowed_hosts(bind: str, extra: str = "") -> frozenset[str] | None:
    """Host names accepted for a server bound to ``bind``; None accepts any (a wildcard bind
    without an explicit list, or ``*`` in the list)."""
    names = {n.strip().lower() for n in extra.split(",") if n.strip()}
    if "*" in names:
        return None
    host = bind.strip("[]").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        return frozenset(names) if names else None
    names.add(host)
    if host in LOOPBACK_NAMES or (ip is not None and ip.is_loopback):
        names |= LOOPBACK_NAMES
    return frozenset(names)


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    """Refuse requests whose ``Host`` header is not one of ``allowed`` (400)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if _host_name(host) not in self.allowed:
                body = msgspec.json.encode({
                    "error": f"Host header {host[:100]!r} is not an address of this server "
                             f"(accepted: {', '.join(sorted(self.allowed))}); to reach it "
                             "under another name, list the name in RENDEZVOUS_ALLOWED_HOSTS",
                    "code": "invalid_host"})
                await _reply(send, 400, body)
                return
        await self.app(scope, receive, send)


class BearerToken:
    """Paths matching ``paths`` need ``Authorization: Bearer <token>`` (401 otherwise)."""

    def __init__(self, app: ASGIApp, token: str, paths: re.Pattern[str] = INFERENCE_PATH,
                 name: str = "RENDEZVOUS_INFER_TOKEN") -> None:
        self.app = app
        self.token = token.encode()
        self.paths = paths
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.paths.fullmatch(scope["path"]):
            auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not token_matches(auth, self.token):
                await _refuse(send, AuthError(
                    f"this endpoint needs 'Authorization: Bearer <token>' with the token set "
                    f"in {self.name} on the server"))
                return
        await self.app(scope, receive, send)


def token_matches(authorization: bytes | str, token: bytes | str) -> bool:
    """Constant-time check of an ``Authorization: Bearer`` header against ``token``; any bytes
    (non-ASCII included) are simply a wrong token."""
    if isinstance(authorization, str):
        authorization = authorization.encode("utf-8", "surrogateescape")
    if isinstance(token, str):
        token = token.encode()
    if not token:
        return False
    given = authorization.removeprefix(b"Bearer ").strip()
    return hmac.compare_digest(given, token)


def harden(app: ASGIApp, *, host: str) -> ASGIApp:
    """``app`` behind every middleware, outermost first in the list below (settings read now:
    RENDEZVOUS_ALLOWED_HOSTS, RENDEZVOUS_INFER_TOKEN). The limits on how fast a request must
    arrive are the HTTP protocol's (``http.protocol``)."""
    infer_token = config.INFER_TOKEN.get()
    layers: list[Callable[[ASGIApp], ASGIApp]] = [
        lambda a: HostCheck(a, allowed_hosts(host, config.ALLOWED_HOSTS.get())),
    ]
    if infer_token:
        layers.append(lambda a: BearerToken(a, infer_token))
    for layer in reversed(layers):
        app = layer(app)
    return app
