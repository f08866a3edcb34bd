"""``POST /v2/models/{d}/infer``: the Open Inference Protocol v2 REST inference call, complete.

Beyond JSON tensors, this accepts the binary tensor data extension (what ``tritonclient.http``
and kserve's REST client send by default): the body is a JSON head of
``Inference-Header-Content-Length`` bytes followed by each input's raw bytes, in input order,
for the inputs whose ``parameters.binary_data_size`` says how many bytes are theirs. Outputs are
returned the same way when the request asks (``parameters.binary_data_output`` for all of them,
``outputs[i].parameters.binary_data`` for one). The ``outputs`` field selects outputs; request
``parameters`` travel with the request as its tags (``Request.meta``).

A request without the header is decoded exactly as before, in one msgspec pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from rendezvous.core.messages import Result
from rendezvous.core.schema import InferInput, InferRequest, Signature, columns_from_oip
from rendezvous.errors import BadRequestError, TooManyRowsError
from rendezvous.http.reply import JSON, Reply
from rendezvous.http.tensors import Tensor, decode_raw

if TYPE_CHECKING:
    from rendezvous.http.app import Proxy

HEADER_LENGTH = "inference-header-content-length"
# Protocol switches, not tags of the request: kept out of Request.meta.
_PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "binary_data", "binary_data_size"})

_json_decode = msgspec.json.Decoder(InferRequest)
_encode = msgspec.json.Encoder().encode


class _HeadInput(msgspec.Struct, kw_only=True):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] = {}


class _Head(msgspec.Struct, kw_only=True):
    inputs: list[_HeadInput]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[dict[str, Any]] = []


_head_decode = msgspec.json.Decoder(_Head)


def meta_from_parameters(raw: Any) -> dict[str, str]:
    """A request's ``parameters`` (or ``meta``) as the string tags a ``Request`` carries;
    protocol switches such as ``binary_data_output`` are left out."""
    if not isinstance(raw, dict):
        raise BadRequestError("'meta'/'parameters' must be a JSON object of string tags")
    return {str(k): str(v) for k, v in raw.items()
            if isinstance(v, str | int | float | bool) and k not in _PROTOCOL_PARAMETERS}


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An OIP request from the body and the ``Inference-Header-Content-Length`` header (None
    when absent), binary inputs decoded into values."""
    if header_length is None:
        try:
            return _json_decode.decode(body)
        except msgspec.ValidationError as exc:
            hint = ("; inputs sent as binary data need the Inference-Header-Content-Length "
                    "header" if b"binary_data_size" in body else "")
            raise BadRequestError(f"not an Open Inference Protocol request: {exc}{hint}") from None
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"malformed JSON: {exc}") from None
    if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise BadRequestError(
            f"Inference-Header-Content-Length {header_length[:20]!r} must be the byte length of "
            f"the JSON head, between 1 and the body's {len(body)} bytes")
    n = int(header_length)
    try:
        head = _head_decode.decode(body[:n])
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"not an Open Inference Protocol request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"malformed JSON head (the first {n} bytes): {exc}") from None
    view = memoryview(body)
    pos = n
    inputs = []
    for inp in head.inputs:
        size = inp.parameters.get("binary_data_size")
        if size is None:
            if inp.data is None:
                raise BadRequestError(f"input {inp.name!r} has neither 'data' nor "
                                      "parameters.binary_data_size")
            data = inp.data
        else:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequestError(f"input {inp.name!r}: binary_data_size {size!r} must be "
                                      "a byte count")
            if pos + size > len(body):
                raise BadRequestError(
                    f"input {inp.name!r}: binary_data_size {size} runs past the end of the "
                    f"body ({len(body) - pos} bytes left)")
            data = decode_raw(inp.name, inp.datatype, inp.shape, view[pos:pos + size])
            pos += size
        inputs.append(InferInput(name=inp.name, shape=inp.shape, datatype=inp.datatype,
                                 data=data, parameters=inp.parameters))
    if pos != len(body):
        raise BadRequestError(f"{len(body) - pos} bytes follow the binary inputs; the "
                              "binary_data_size parameters must add up to the body after the "
                              "JSON head")
    return InferRequest(inputs=inputs, id=head.id, parameters=head.parameters,
                        outputs=head.outputs)


def selected_outputs(req: InferRequest, available: list[str]) -> list[tuple[str, bool]]:
    """(output name, as binary?) for the outputs the request asks for, all by default."""
    default_binary = req.parameters.get("binary_data_output") is True
    if not req.outputs:
        return [(name, default_binary) for name in available]
    chosen = []
    for out in req.outputs:
        name = out.get("name")
        if name not in available:
            raise BadRequestError(f"output {name!r} is not produced by this deployment's "
                                  f"models; ask for one of {available} or omit 'outputs'")
        params = out.get("parameters") or {}
        binary = params.get("binary_data", default_binary) if isinstance(params, dict) else False
        chosen.append((name, binary is True))
    return chosen


def render(deployment: str, result: Result, selected: list[tuple[str, bool]]
           ) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON head's length."""
    outputs: list[dict[str, Any]] = []
    raws: list[bytes] = []
    for name, binary in selected:
        t = Tensor(name, result.outputs[name])
        if binary:
            raw = t.raw()
            raws.append(raw)
            outputs.append({"name": name, "shape": t.shape, "datatype": t.datatype,
                            "parameters": {"binary_data_size": len(raw)}})
        else:
            outputs.append({"name": name, "shape": t.shape, "datatype": t.datatype,
                            "data": t.data})
    head = _encode({
        "model_name": deployment, "model_version": result.model, "id": result.request_id,
        "parameters": {"reason": result.reason.value, "policy_version": result.policy_version},
        "outputs": outputs})
    if not raws:
        return head, None
    return b"".join([head, *raws]), len(head)


def decode_infer(body: bytes, header_length: str | None, sig: Signature,
                 max_rows: int) -> tuple[InferRequest, dict[str, list[Any]], int]:
    """``parse_request``, then the rows as columns of ``sig``, at most ``max_rows`` of them
    (the declared shape is checked before the values are)."""
    req = parse_request(body, header_length)
    declared = max((i.shape[0] for i in req.inputs if i.shape), default=0)
    if declared > max_rows:
        raise TooManyRowsError(declared, max_rows)
    inputs, n_rows = columns_from_oip(req, sig)
    if n_rows > max_rows:
        raise TooManyRowsError(n_rows, max_rows)
    return req, inputs, n_rows


async def infer(proxy: Proxy, params: dict[str, str], body: bytes,
                headers: dict[str, str]) -> Reply:
    """The route handler (the proxy's decode → append → await path)."""
    rt = await proxy._runtime(params["d"])
    req, inputs, n_rows = await proxy._decoded(decode_infer, body, headers.get(HEADER_LENGTH),
                                               rt.signature, proxy.max_rows)
    result = await proxy._submit(rt, inputs, n_rows, req.id or headers.get("x-request-id"),
                                 meta_from_parameters(req.parameters), body)
    proxy._check(result, rt)
    out, head_length = render(rt.name, result, selected_outputs(req, list(result.outputs)))
    reply_headers = proxy._headers(result)
    if head_length is not None:
        reply_headers = [(b"content-type", b"application/octet-stream"),
                         (HEADER_LENGTH.encode(), str(head_length).encode()),
                         *(h for h in reply_headers if h not in JSON)]
    return Reply(200, out, reply_headers)
