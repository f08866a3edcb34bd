"""The HTTP edge (a lean ASGI app): decode, validate, append to the input stream, await the
rendezvous answer, reply. It never calls a model.

Endpoints: Open Inference Protocol v2 (``/v2/health/live|ready``, ``/v2/models/{d}``,
``/v2/models/{d}/ready``, ``/v2/models/{d}/infer``), plain JSON records
(``/v1/deployments/{d}/predict``), MLflow's scoring protocol (``/v1/deployments/{d}/invocations``,
``/invocations``; ``mlflow.py``), status, admin (bearer token) and ``/metrics``. The OIP
inference call lives in ``oip.py``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from rendezvous import config, deploy
from rendezvous.core import messages
from rendezvous.core.messages import Reason, Request, Result
from rendezvous.core.policy import Policy
from rendezvous.core.schema import Signature, columns_from_records
from rendezvous.errors import (
    AuthError,
    BadRequestError,
    ConfigError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    RendezvousError,
    SlaMissError,
    StreamError,
    TooManyRowsError,
    UnavailableError,
)
from rendezvous.hosting.runtime import DeploymentRuntime, Server
from rendezvous.http import mlflow, oip
from rendezvous.http.analytics import ROUTES as ANALYTICS_ROUTES
from rendezvous.http.analytics import AnalyticsHandlers
from rendezvous.http.errors import error_body
from rendezvous.http.metrics import ProxyMetrics, backlog
from rendezvous.http.middleware import token_matches
from rendezvous.http.reply import Reply, send_reply
from rendezvous.http.tensors import datatype_of, shape_of
from rendezvous.ids import new_request_id

log = logging.getLogger(__name__)

RESULT_MARGIN_S = 0.5  # after the deadline, how long to wait for the rendezvous server
EXPIRY_SWEEP_S = 0.05
OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are decoded and validated in a thread
RECENT_IDS = 10_000  # client-supplied request ids remembered for idempotent retries
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_USER = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
_JSON = [(b"content-type", b"application/json")]
_json_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


Handler = Callable[[dict[str, Any], bytes, dict[str, str]], Awaitable[Reply]]


class Proxy:
    """ASGI application. ``Proxy(server)``; its lifespan starts and stops the server."""

    def __init__(self, server: Server, *, admin_token: str = "",
                 max_body_bytes: int | None = None, max_rows: int | None = None) -> None:
        self.server = server
        self.admin_token = admin_token
        self.max_body = config.MAX_BODY_BYTES.get(max_body_bytes)
        self.max_rows = config.MAX_ROWS.get(max_rows)
        self.address = f"proxy-{new_request_id()}"
        self.startup_error: BaseException | None = None
        # Keyed by (deployment, request id): ids are the client's, and unique only per
        # deployment. ``digests`` holds each one's payload digest, so a reused id with other
        # data is a conflict, never another request's answer.
        self.pending: dict[tuple[str, str], asyncio.Future[Result]] = {}
        self.digests: dict[tuple[str, str], bytes] = {}
        self.recent: OrderedDict[tuple[str, str], tuple[bytes, Result]] = OrderedDict()
        self.metrics = ProxyMetrics(server)
        # Per deployment, each output's (datatype, rank) as infer returned it: what the model
        # metadata declares, so that the two never disagree.
        self.output_types: dict[str, dict[str, tuple[str, int]]] = {}
        # (expiry on the loop clock, request id) in arrival order: a sweep every EXPIRY_SWEEP_S
        # instead of a timer per request.
        self._expiries: deque[tuple[float, tuple[str, str], float]] = deque()
        self._sweeper: asyncio.Task[None] | None = None
        analytics = self.analytics = AnalyticsHandlers(server, Reply)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/v2/health/live"), self._live),
            ("GET", re.compile(r"/v2/health/ready"), self._ready),
            ("GET", re.compile(r"/v2"), self._server_meta),
            ("POST", re.compile(r"/v2/models/(?P<d>[^/]+)/infer"),
             functools.partial(oip.infer, self)),
            ("GET", re.compile(r"/v2/models/(?P<d>[^/]+)/ready"), self._model_ready),
            ("GET", re.compile(r"/v2/models/(?P<d>[^/]+)"), self._model_meta),
            ("POST", re.compile(r"/v1/deployments/(?P<d>[^/]+)/predict"), self._predict),
            ("POST", re.compile(r"/v1/deployments/(?P<d>[^/]+)/invocations"),
             functools.partial(mlflow.invocations, self)),
            ("POST", re.compile(r"/invocations"), functools.partial(mlflow.invocations, self)),
            ("GET", re.compile(r"/ping"), mlflow.ping),  # MLflow's scoring server's probes
            ("GET", re.compile(r"/health"), mlflow.ping),
            ("GET", re.compile(r"/v1/deployments/(?P<d>[^/]+)/status"), self._status),
            ("GET", re.compile(r"/v1/deployments"), self._list),
            ("POST", re.compile(r"/v1/admin/deployments/(?P<d>[^/]+)/(?P<op>reload|promote|"
                                r"rollback)"), self._admin),
            ("POST", re.compile(r"/v1/admin/deployments/(?P<d>[^/]+)/apply"),
             self._apply_policy),
            ("GET", re.compile(r"/metrics"), self._metrics),
            ("GET", re.compile(r"/openapi\.json"), self._openapi),
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
        await send_reply(send, reply.status, reply.body, reply.headers)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    # Kept for the caller to raise (one line for a RendezvousError: it names
                    # the problem and the fix; a traceback only for the unexpected).
                    self.startup_error = exc
                    if isinstance(exc, RendezvousError):
                        log.error("startup failed: %s", exc)
                    else:
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
        # Who is calling, for the audit trail; set here so that a client cannot claim it.
        client = scope.get("client")
        headers[PEER] = f"{client[0]}:{client[1]}" if client else "unknown"
        try:
            allowed = []
            for m, pattern, handler in self._routes:
                match = pattern.fullmatch(path)
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
            status, body, extra = error_body(exc, exc.request_id)
            return Reply(status, body, [*_JSON, *extra])
        except RecursionError:
            return Reply(400, _encode({"error": "the JSON body is nested too deeply; send "
                                                "records or tensors as documented",
                                       "code": "bad_request"}), list(_JSON))
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

    async def _runtime(self, name: str) -> DeploymentRuntime:
        return await self.server.runtime(name)

    # -- the request path ---------------------------------------------------------------------

    async def _submit(self, rt: DeploymentRuntime, inputs: dict[str, list[Any]], n_rows: int,
                      client_id: str | None, meta: dict[str, str], body: bytes) -> Result:
        if not self.server.accepting(rt) or not self._writable():
            raise UnavailableError(
                f"deployment {rt.name} is starting, stopping or cannot reach its stream engine"
                + (f" (nobody reads {', '.join(g for _, g in rt.unread)} yet)"
                   if rt.unread else "") + "; retry shortly")
        key: tuple[str, str] | None = None
        digest = b""
        if client_id is not None:
            if not _CLIENT_ID.fullmatch(client_id):
                raise BadRequestError(
                    f"request id {client_id[:80]!r} is invalid; use 1-128 letters, digits, "
                    "'_', '.', ':' or '-'")
            key = (rt.name, client_id)
            digest = hashlib.blake2b(body, digest_size=16).digest()
            seen = self.recent.get(key)
            known = seen[0] if seen is not None else self.digests.get(key)
            if known is not None and known != digest:
                raise ConflictError(
                    f"request id {client_id!r} was already used on deployment {rt.name!r} "
                    "with other data; use a new id for a new request")
            if seen is not None:
                return seen[1]
            inflight = self.pending.get(key)
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
        pkey = key or (rt.name, rid)
        self.pending[pkey] = fut
        if key is not None:
            self.digests[key] = digest
        self._expiries.append((loop.time() + deadline_ms / 1000 + RESULT_MARGIN_S, pkey,
                               deadline_ms))
        try:
            try:
                await rt.stream.append(rt.input_topic, [messages.encode(req)], [rid])
            except (StreamError, UnavailableError) as exc:
                raise UnavailableError(f"the input stream is unavailable: {exc}") from exc
            result = await fut
        finally:
            self.pending.pop(pkey, None)
            if key is not None:
                self.digests.pop(key, None)
        if key is not None:
            self.recent[key] = (digest, result)
            if len(self.recent) > RECENT_IDS:
                self.recent.popitem(last=False)
        return result

    def _writable(self) -> bool:
        stream = getattr(self.server, "stream", None)  # not there before start()
        return stream is None or stream.health().writable

    def _on_result(self, data: bytes) -> None:
        result = messages.result_decoder.decode(data)
        fut = self.pending.get((result.deployment, result.request_id))
        if fut is not None and not fut.done():
            fut.set_result(result)

    async def _sweep_expired(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            now = loop.time()
            due = []
            while self._expiries and self._expiries[0][0] <= now:
                due.append(self._expiries.popleft())
            if due:
                # Results already on their way (e.g. after a long stall of the loop) are
                # delivered by callbacks queued behind this task: let them run first.
                for _ in range(3):
                    await asyncio.sleep(0)
                for _, key, deadline_ms in due:
                    self._expire(key, deadline_ms)

    def _expire(self, key: tuple[str, str], deadline_ms: float) -> None:
        fut = self.pending.get(key)
        if fut is None or fut.done():
            return
        rid = key[1]
        exc: RendezvousError
        if self.server.ready:
            # The rendezvous server runs here and answers at the deadline: a missing answer
            # is a missed deadline, not an outage (a 503 would invite a resend of the body).
            exc = SlaMissError(rid, deadline_ms)
        else:
            exc = UnavailableError(
                f"no answer for request {rid} from the rendezvous server; it may be down. "
                "The request is recorded and will be scored when it is back", retry_after_s=1)
        exc.request_id = rid
        fut.set_exception(exc)

    def _check(self, result: Result, rt: DeploymentRuntime) -> None:
        """Count the answer, then raise for the ones that are errors (504, 500)."""
        self.metrics.observe(rt.name, result)
        if result.reason in (Reason.SLA_MISS, Reason.ERROR):
            exc: RendezvousError
            if result.reason is Reason.SLA_MISS:
                exc = SlaMissError(result.request_id, rt.policy.deadline_ms)
            else:
                exc = RendezvousError(f"every candidate model failed on request "
                                      f"{result.request_id}: {result.error}")
            exc.request_id = result.request_id
            raise exc
        learned = self.output_types.setdefault(rt.name, {})
        for name, values in result.outputs.items():
            if name not in learned:
                learned[name] = (datatype_of(values), len(shape_of(values)))

    def _headers(self, result: Result) -> list[tuple[bytes, bytes]]:
        return [*_JSON, (b"x-request-id", result.request_id.encode()),
                (b"x-rendezvous-model", (result.model or "").encode()),
                (b"x-rendezvous-reason", result.reason.value.encode())]

    async def _decoded(self, decode: Callable[..., Any], body: bytes, *args: Any) -> Any:
        """``decode(body, *args)``, in a thread when the body is large: decoding and checking
        100,000 rows takes most of a second, which would stall every other request."""
        if len(body) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(decode, body, *args)
        return decode(body, *args)

    async def _predict(self, params: dict[str, str], body: bytes,
                       headers: dict[str, str]) -> Reply:
        rt = await self._runtime(params["d"])
        inputs, n_rows, meta = await self._decoded(_decode_records, body, rt.signature,
                                                   self.max_rows)
        result = await self._submit(rt, inputs, n_rows, headers.get("x-request-id"), meta, body)
        self._check(result, rt)
        return Reply(200, _encode({
            "request_id": result.request_id, "model": result.model,
            "reason": result.reason.value, "policy_version": result.policy_version,
            **result.outputs}), self._headers(result))

    # -- metadata, status, admin ----------------------------------------------------------------

    async def _live(self, *_: Any) -> Reply:
        return Reply(200, b'{"live":true}', list(_JSON))

    async def _ready(self, *_: Any) -> Reply:
        ok = self.server.ready and self._writable()
        return Reply(200 if ok else 503, _encode({"ready": ok}), list(_JSON))

    async def _server_meta(self, *_: Any) -> Reply:
        from importlib.metadata import version

        return Reply(200, _encode({"name": "rendezvous", "version": version("rendezvous-ml"),
                                   "extensions": ["rendezvous"]}), list(_JSON))

    async def _model_ready(self, params: dict[str, str], *_: Any) -> Reply:
        rt = await self._runtime(params["d"])
        ok = self.server.ready and rt.ready and self._writable()
        return Reply(200 if ok else 503, _encode({"name": rt.name, "ready": ok}), list(_JSON))

    async def _model_meta(self, params: dict[str, str], *_: Any) -> Reply:
        rt = await self._runtime(params["d"])
        return Reply(200, _encode({
            "name": rt.name, "versions": rt.policy.model_names(), "platform": "rendezvous",
            "inputs": [{"name": c.name, "datatype": c.datatype.value, "shape": [-1]}
                       for c in rt.signature.inputs],
            # Learned from the answers served (none yet: an empty list, never a wrong type).
            "outputs": [{"name": n, "datatype": dt, "shape": [-1] * rank}
                        for n, (dt, rank) in self.output_types.get(rt.name, {}).items()],
            "parameters": {"policy_version": rt.policy_version,
                           "deadline_ms": rt.policy.deadline_ms,
                           "champion": rt.policy.champion,
                           "models": {m.model: m.role.value for m in rt.policy.models},
                           # loading | warming | ready | restarting | failed (with detail);
                           # shadows may still be warming while the deployment is ready.
                           "model_states": rt.model_states()},
        }), list(_JSON))

    async def _list(self, *_: Any) -> Reply:
        return Reply(200, _encode({"deployments": sorted(self.server.runtimes)}), list(_JSON))

    async def _status(self, params: dict[str, str], *_: Any) -> Reply:
        rt = await self._runtime(params["d"])
        status = self.server.status(params["d"])
        status["backlog"] = backlog(self.server, rt)
        return Reply(200, _encode(status), list(_JSON))

    def _authorize(self, headers: dict[str, str], deployment: str) -> None:
        if not token_matches(headers.get("authorization", ""), self.admin_token):
            raise AuthError(
                "admin endpoints need 'Authorization: Bearer <token>'; the token is in "
                f"<home>/run/{deployment}.json (while the server runs) or "
                "RENDEZVOUS_ADMIN_TOKEN")

    async def _apply_policy(self, params: dict[str, str], body: bytes,
                            headers: dict[str, str]) -> Reply:
        """Record a policy once its models load (the server keeps their hosts), then switch."""
        self._authorize(headers, params["d"])
        try:
            doc = _json_decode.decode(body or b"{}")
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"malformed JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("policy"), dict):
            raise BadRequestError('apply needs a JSON body {"policy": {...}, "note": "..."}')
        try:
            policy = msgspec.convert(doc["policy"], Policy)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid policy: {exc}") from None
        rec = await self.server.apply_policy(params["d"], policy, by=_who(headers),
                                             note=str(doc.get("note") or ""))
        return Reply(200, _encode({"deployment": rec.deployment, "policy_version": rec.version,
                                   "champion": policy.champion}), list(_JSON))

    async def _admin(self, params: dict[str, str], body: bytes, headers: dict[str, str]) -> Reply:
        self._authorize(headers, params["d"])
        rt = await self._runtime(params["d"])
        registry = self.server.registry
        by = _who(headers)
        gates: dict[str, Any] | None = None
        if params["op"] == "promote":
            try:
                doc = _json_decode.decode(body or b"{}")
            except (msgspec.DecodeError, UnicodeDecodeError):
                doc = None
            model = doc.get("model") if isinstance(doc, dict) else None
            force = doc.get("force", False) if isinstance(doc, dict) else False
            if not isinstance(model, str) or not isinstance(force, bool):
                raise BadRequestError('promote needs a JSON body {"model": "NAME@VERSION", '
                                      '"force": false}')
            try:
                docs = await self.analytics.gate_documents(rt.name)
            except UnavailableError:
                if not force:
                    raise
                docs = {}  # forced without a monitor: recorded with every gate lacking data
            _, report = await asyncio.to_thread(deploy.promote, registry, rt.name, model,
                                                documents=docs, force=force, by=by)
            gates = {**report.to_dict(), "forced": force}
        elif params["op"] == "rollback":
            await asyncio.to_thread(registry.rollback, rt.name, by=by)
        version = await rt.reload()
        answer: dict[str, Any] = {"deployment": rt.name, "policy_version": version,
                                  "champion": rt.policy.champion}
        if gates is not None:
            answer["gates"] = gates
        return Reply(200, _encode(answer), list(_JSON))

    async def _openapi(self, *_: Any) -> Reply:
        from rendezvous.http.openapi import ENCODED

        return Reply(200, ENCODED, list(_JSON))

    async def _metrics(self, *_: Any) -> Reply:
        body, ctype = await self.metrics.render()
        return Reply(200, body, [(b"content-type", ctype.encode())])


PEER = "x-rendezvous-peer"  # set by the proxy from the connection, never by the client
USER_HEADER = "x-rendezvous-user"  # who asked, as the CLI tells it


def _who(headers: dict[str, str]) -> str:
    """The audit trail's ``by``: the user the CLI names, the token's principal (the admin
    token) and the caller's address, e.g. ``alice (admin token, 127.0.0.1:51234)``."""
    user = headers.get(USER_HEADER, "")
    user = user if _USER.fullmatch(user) else "unknown user"
    return f"{user} (admin token, {headers.get(PEER, 'unknown')})"[:128]


def _decode_records(body: bytes, sig: Signature,
                    max_rows: int) -> tuple[dict[str, list[Any]], int, dict[str, str]]:
    try:
        doc = _json_decode.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8 is the latter
        raise BadRequestError(f"malformed JSON (JSON is UTF-8 text): {exc}") from None
    meta: dict[str, str] = {}
    if isinstance(doc, dict) and "records" in doc:  # {"records": [...], "meta": {...}}
        meta = _meta(doc.get("meta") or {})
        doc = doc["records"]
    if isinstance(doc, list) and len(doc) > max_rows:
        raise TooManyRowsError(len(doc), max_rows)
    inputs, n_rows = columns_from_records(doc, sig)
    return inputs, n_rows, meta


def _meta(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise BadRequestError("'meta'/'parameters' must be a JSON object of string tags")
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str | int | float | bool)}
