"""The HTTP edge (a lean ASGI app): decode, validate, append to the input stream, await the
rendezvous answer, reply. It never calls a model.

Endpoints: Open Inference Protocol v2 (``/v2/health/live|ready``, ``/v2/models/{d}``,
``/v2/models/{d}/ready``, ``/v2/models/{d}/infer``), plain JSON records
(``/v1/deployments/{d}/predict``), status, admin (bearer token) and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from rendezvous import config
from rendezvous.core import messages
from rendezvous.core.messages import Reason, Request, Result
from rendezvous.core.schema import InferRequest, columns_from_oip, columns_from_records
from rendezvous.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RendezvousError,
    SlaMissError,
    StreamError,
    UnavailableError,
)
from rendezvous.hosting.runtime import DeploymentRuntime, Server
from rendezvous.http.analytics import ROUTES as ANALYTICS_ROUTES
from rendezvous.http.analytics import AnalyticsHandlers
from rendezvous.http.errors import error_body
from rendezvous.http.metrics import ProxyMetrics
from rendezvous.ids import new_request_id

log = logging.getLogger(__name__)

RESULT_MARGIN_S = 0.5  # after the deadline, how long to wait for the rendezvous server
EXPIRY_SWEEP_S = 0.05
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_JSON = [(b"content-type", b"application/json")]
_json_decode = msgspec.json.Decoder()
_oip_decode = msgspec.json.Decoder(InferRequest)
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


Handler = Callable[[dict[str, Any], bytes, dict[str, str]], Awaitable[Reply]]


def _datatype(values: list[Any]) -> str:
    v = values
    while v and isinstance(v, list):
        v = v[0]
    if isinstance(v, bool):
        return "BOOL"
    if isinstance(v, int):
        return "INT64"
    if isinstance(v, float):
        return "FP64"
    return "BYTES"


def _shape(values: list[Any]) -> list[int]:
    shape = [len(values)]
    v = values
    while v and isinstance(v[0], list):
        v = v[0]
        shape.append(len(v))
    return shape


def _flat(values: list[Any]) -> list[Any]:
    if values and isinstance(values[0], list):
        return [x for row in values for x in _flat(row)]
    return values


class Proxy:
    """ASGI application. ``Proxy(server)``; its lifespan starts and stops the server."""

    def __init__(self, server: Server, *, admin_token: str = "",
                 max_body_bytes: int | None = None) -> None:
        self.server = server
        self.admin_token = admin_token
        self.max_body = config.MAX_BODY_BYTES.get(max_body_bytes)
        self.address = f"proxy-{new_request_id()}"
        self.pending: dict[str, asyncio.Future[Result]] = {}
        self.recent: OrderedDict[str, Result] = OrderedDict()  # client-supplied ids only
        self.metrics = ProxyMetrics(server)
        # (expiry on the loop clock, request id) in arrival order: a sweep every EXPIRY_SWEEP_S
        # instead of a timer per request.
        self._expiries: deque[tuple[float, str]] = deque()
        self._sweeper: asyncio.Task[None] | None = None
        analytics = AnalyticsHandlers(server, Reply)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"^/v2/health/live$"), self._live),
            ("GET", re.compile(r"^/v2/health/ready$"), self._ready),
            ("GET", re.compile(r"^/v2$"), self._server_meta),
            ("POST", re.compile(r"^/v2/models/(?P<d>[^/]+)/infer$"), self._infer),
            ("GET", re.compile(r"^/v2/models/(?P<d>[^/]+)/ready$"), self._model_ready),
            ("GET", re.compile(r"^/v2/models/(?P<d>[^/]+)$"), self._model_meta),
            ("POST", re.compile(r"^/v1/deployments/(?P<d>[^/]+)/predict$"), self._predict),
            ("GET", re.compile(r"^/v1/deployments/(?P<d>[^/]+)/status$"), self._status),
            ("GET", re.compile(r"^/v1/deployments$"), self._list),
            ("POST", re.compile(r"^/v1/admin/deployments/(?P<d>[^/]+)/(?P<op>reload|promote|"
                                r"rollback)$"), self._admin),
            ("GET", re.compile(r"^/metrics$"), self._metrics),
            *[(m, re.compile(p), getattr(analytics, h)) for m, p, h in ANALYTICS_ROUTES],
        ]

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        reply = await self._dispatch(scope, receive)
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        self.server.returns.register(self.address, self._on_result)
        await self.server.start()
        self._sweeper = asyncio.ensure_future(self._sweep_expired())

    async def stop(self) -> None:
        # Let requests in flight get their answers before the roles stop.
        deadline = time.monotonic() + 5
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.server.returns.unregister(self.address)
        await self.server.stop()

    async def _dispatch(self, scope: dict[str, Any], receive: Any) -> Reply:
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            allowed = []
            for m, pattern, handler in self._routes:
                match = pattern.match(path)
                if match is None:
                    continue
                if m != method:
                    allowed.append(m)
                    continue
                body = await self._body(receive, headers) if method == "POST" else b""
                return await handler(match.groupdict(), body, headers)
            if allowed:
                return Reply(405, _encode({"error": f"{method} is not allowed on {path}; use "
                                                    f"{', '.join(allowed)}",
                                           "code": "method_not_allowed"}), list(_JSON))
            raise NotFoundError("path", path, "see /docs in the README for the endpoints")
        except RendezvousError as exc:
            status, body, extra = error_body(exc, getattr(exc, "request_id", None))
            return Reply(status, body, [*_JSON, *extra])
        except Exception:
            log.exception("unhandled error on %s %s", method, path)
            return Reply(500, _encode({"error": "internal error; see the server log",
                                       "code": "internal_error"}), list(_JSON))

    async def _body(self, receive: Any, headers: dict[str, str]) -> bytes:
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLargeError(int(declared), self.max_body)
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise BadRequestError("client disconnected before sending the whole body")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLargeError(size, self.max_body)
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _runtime(self, name: str) -> DeploymentRuntime:
        rt = self.server.runtimes.get(name)
        if rt is None:
            known = ", ".join(sorted(self.server.runtimes)) or "none"
            raise NotFoundError("deployment", name, f"this server serves: {known}")
        return rt

    # -- the request path ---------------------------------------------------------------------

    async def _submit(self, rt: DeploymentRuntime, inputs: dict[str, list[Any]], n_rows: int,
                      client_id: str | None, meta: dict[str, str]) -> Result:
        if not self.server.ready:
            raise UnavailableError("the server is starting, stopping or cannot reach its "
                                   "stream engine; retry shortly")
        if client_id is not None:
            if not _CLIENT_ID.match(client_id):
                raise BadRequestError(
                    f"request id {client_id[:80]!r} is invalid; use 1-128 letters, digits, "
                    "'_', '.', ':' or '-'")
            cached = self.recent.get(client_id)
            if cached is not None:
                return cached
            inflight = self.pending.get(client_id)
            if inflight is not None:
                return await asyncio.shield(inflight)
        rid = client_id or new_request_id()
        now = time.time_ns()
        deadline_ms = rt.policy.deadline_ms
        req = Request(request_id=rid, deployment=rt.name, received_ns=now,
                      deadline_ns=now + int(deadline_ms * 1e6), inputs=inputs, n_rows=n_rows,
                      return_to=self.address, policy_version=rt.policy_version, meta=meta)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self.pending[rid] = fut
        self._expiries.append((loop.time() + deadline_ms / 1000 + RESULT_MARGIN_S, rid))
        try:
            try:
                await rt.stream.append(rt.input_topic, [messages.encode(req)], [rid])
            except (StreamError, UnavailableError) as exc:
                raise UnavailableError(f"the input stream is unavailable: {exc}") from exc
            result = await fut
        finally:
            self.pending.pop(rid, None)
        if client_id is not None:
            self.recent[client_id] = result
            if len(self.recent) > 10_000:
                self.recent.popitem(last=False)
        return result

    def _on_result(self, data: bytes) -> None:
        result = messages.result_decoder.decode(data)
        fut = self.pending.get(result.request_id)
        if fut is not None and not fut.done():
            fut.set_result(result)

    async def _sweep_expired(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            now = loop.time()
            while self._expiries and self._expiries[0][0] <= now:
                self._expire(self._expiries.popleft()[1])

    def _expire(self, rid: str) -> None:
        fut = self.pending.get(rid)
        if fut is not None and not fut.done():
            exc = UnavailableError(
                f"no answer for request {rid} from the rendezvous server; it may be down. "
                "The request is recorded and will be scored when it is back", retry_after_s=1)
            exc.request_id = rid  # type: ignore[attr-defined]
            fut.set_exception(exc)

    def _check(self, result: Result, rt: DeploymentRuntime) -> None:
        if result.reason in (Reason.SLA_MISS, Reason.ERROR):
            exc: RendezvousError
            if result.reason is Reason.SLA_MISS:
                exc = SlaMissError(result.request_id, rt.policy.deadline_ms)
            else:
                exc = RendezvousError(f"every candidate model failed on request "
                                      f"{result.request_id}: {result.error}")
            exc.request_id = result.request_id  # type: ignore[attr-defined]
            raise exc

    def _headers(self, result: Result) -> list[tuple[bytes, bytes]]:
        return [*_JSON, (b"x-request-id", result.request_id.encode()),
                (b"x-rendezvous-model", (result.model or "").encode()),
                (b"x-rendezvous-reason", result.reason.value.encode())]

    async def _infer(self, params: dict[str, str], body: bytes, headers: dict[str, str]) -> Reply:
        rt = self._runtime(params["d"])
        try:
            req = _oip_decode.decode(body)
        except msgspec.ValidationError as exc:
            raise BadRequestError(f"not an Open Inference Protocol request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"malformed JSON: {exc}") from None
        assert rt.signature is not None
        inputs, n_rows = columns_from_oip(req, rt.signature)
        result = await self._submit(rt, inputs, n_rows, req.id or headers.get("x-request-id"),
                                    _meta(req.parameters))
        self._check(result, rt)
        self.metrics.observe(rt.name, result)
        outputs = [{"name": k, "shape": _shape(v), "datatype": _datatype(v), "data": _flat(v)}
                   for k, v in result.outputs.items()]
        return Reply(200, _encode({
            "model_name": rt.name, "model_version": result.model, "id": result.request_id,
            "parameters": {"reason": result.reason.value,
                           "policy_version": result.policy_version},
            "outputs": outputs}), self._headers(result))

    async def _predict(self, params: dict[str, str], body: bytes,
                       headers: dict[str, str]) -> Reply:
        rt = self._runtime(params["d"])
        try:
            doc = _json_decode.decode(body)
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"malformed JSON: {exc}") from None
        meta: dict[str, str] = {}
        if isinstance(doc, dict) and "records" in doc:  # {"records": [...], "meta": {...}}
            meta = _meta(doc.get("meta") or {})
            doc = doc["records"]
        assert rt.signature is not None
        inputs, n_rows = columns_from_records(doc, rt.signature)
        result = await self._submit(rt, inputs, n_rows, headers.get("x-request-id"), meta)
        self._check(result, rt)
        self.metrics.observe(rt.name, result)
        return Reply(200, _encode({
            "request_id": result.request_id, "model": result.model,
            "reason": result.reason.value, "policy_version": result.policy_version,
            **result.outputs}), self._headers(result))

    # -- metadata, status, admin ----------------------------------------------------------------

    async def _live(self, *_: Any) -> Reply:
        return Reply(200, b'{"live":true}', list(_JSON))

    async def _ready(self, *_: Any) -> Reply:
        ok = self.server.ready
        return Reply(200 if ok else 503, _encode({"ready": ok}), list(_JSON))

    async def _server_meta(self, *_: Any) -> Reply:
        from importlib.metadata import version

        return Reply(200, _encode({"name": "rendezvous", "version": version("rendezvous-ml"),
                                   "extensions": ["rendezvous"]}), list(_JSON))

    async def _model_ready(self, params: dict[str, str], *_: Any) -> Reply:
        rt = self._runtime(params["d"])
        return Reply(200 if self.server.ready else 503,
                     _encode({"name": rt.name, "ready": self.server.ready}), list(_JSON))

    async def _model_meta(self, params: dict[str, str], *_: Any) -> Reply:
        rt = self._runtime(params["d"])
        assert rt.signature is not None
        return Reply(200, _encode({
            "name": rt.name, "versions": rt.policy.model_names(), "platform": "rendezvous",
            "inputs": [{"name": c.name, "datatype": c.datatype.value, "shape": [-1]}
                       for c in rt.signature.inputs],
            "outputs": [{"name": "predictions", "datatype": "BYTES", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP64", "shape": [-1, -1]}],
            "parameters": {"policy_version": rt.policy_version,
                           "deadline_ms": rt.policy.deadline_ms,
                           "champion": rt.policy.champion,
                           "models": {m.model: m.role.value for m in rt.policy.models}},
        }), list(_JSON))

    async def _list(self, *_: Any) -> Reply:
        return Reply(200, _encode({"deployments": sorted(self.server.runtimes)}), list(_JSON))

    async def _status(self, params: dict[str, str], *_: Any) -> Reply:
        self._runtime(params["d"])
        return Reply(200, _encode(self.server.status(params["d"])), list(_JSON))

    async def _admin(self, params: dict[str, str], body: bytes, headers: dict[str, str]) -> Reply:
        auth = headers.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        if not self.admin_token or not hmac.compare_digest(token, self.admin_token):
            raise AuthError("admin endpoints need 'Authorization: Bearer <token>'; the token is "
                            "in <home>/run/server.json or RENDEZVOUS_ADMIN_TOKEN")
        rt = self._runtime(params["d"])
        registry = self.server.registry
        if params["op"] == "promote":
            try:
                model = _json_decode.decode(body or b"{}").get("model")
            except (msgspec.DecodeError, AttributeError):
                model = None
            if not isinstance(model, str):
                raise BadRequestError('promote needs a JSON body {"model": "NAME@VERSION"}')
            await asyncio.to_thread(registry.promote, rt.name, model, by="admin-api")
        elif params["op"] == "rollback":
            await asyncio.to_thread(registry.rollback, rt.name, by="admin-api")
        version = await rt.reload()
        return Reply(200, _encode({"deployment": rt.name, "policy_version": version,
                                   "champion": rt.policy.champion}), list(_JSON))

    async def _metrics(self, *_: Any) -> Reply:
        body, ctype = self.metrics.render()
        return Reply(200, body, [(b"content-type", ctype.encode())])


def _meta(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise BadRequestError("'meta'/'parameters' must be a JSON object of string tags")
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str | int | float | bool)}
