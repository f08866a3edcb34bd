"""The Open Inference Protocol v2 ``GRPCInferenceService`` over the proxy's request path.

Same deployments, same validation (``columns_from_oip``), same decode → append → await path
as ``POST /v2/models/{d}/infer``; errors leave through the HTTP edge's table
(``http/errors.py``) and one more table from its error codes to gRPC status codes. Outputs are
always sent as ``raw_output_contents`` (what Triton does and its clients read).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import grpc

from rendezvous.core.messages import Result
from rendezvous.core.schema import InferInput, InferRequest, columns_from_oip
from rendezvous.errors import BadRequestError, RendezvousError, TooManyRowsError
from rendezvous.http.errors import status_for
from rendezvous.http.grpc import oip_v2_pb2 as pb
from rendezvous.http.oip import meta_from_parameters, selected_outputs
from rendezvous.http.tensors import Tensor, decode_raw

if TYPE_CHECKING:
    from rendezvous.http.app import Proxy

log = logging.getLogger(__name__)

# The name clients call (Triton's and KServe's stubs), whatever our proto package is.
SERVICE = "inference.GRPCInferenceService"

# The HTTP edge's error codes (http/errors.py STATUS) as gRPC status codes.
CODES: dict[str, grpc.StatusCode] = {
    "bad_request": grpc.StatusCode.INVALID_ARGUMENT,
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "conflict": grpc.StatusCode.ALREADY_EXISTS,
    "payload_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too_many_rows": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "request_timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "model_load_failed": grpc.StatusCode.FAILED_PRECONDITION,
    "gates_failed": grpc.StatusCode.FAILED_PRECONDITION,
    "unsafe_artifact": grpc.StatusCode.FAILED_PRECONDITION,
    "flavor_error": grpc.StatusCode.FAILED_PRECONDITION,
    "log_in_use": grpc.StatusCode.UNAVAILABLE,
    "log_mismatch": grpc.StatusCode.UNAVAILABLE,
    "validation_error": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_config": grpc.StatusCode.FAILED_PRECONDITION,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "sla_miss": grpc.StatusCode.DEADLINE_EXCEEDED,
    "artifact_integrity": grpc.StatusCode.INTERNAL,
    "internal_error": grpc.StatusCode.INTERNAL,
}

# Which typed ``contents`` field carries each datatype when the client sends no raw bytes.
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def grpc_code(exc: RendezvousError) -> grpc.StatusCode:
    return CODES.get(status_for(exc)[1], grpc.StatusCode.INTERNAL)


def _param(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _contents(t: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    field = _CONTENTS.get(t.datatype)
    if field is None:
        raise BadRequestError(f"input {t.name!r}: datatype {t.datatype!r} has no typed "
                              "contents field; send it in raw_input_contents")
    values = list(getattr(t.contents, field))
    if t.datatype == "BYTES":
        try:
            return [v.decode() for v in values]
        except UnicodeDecodeError:
            raise BadRequestError(f"input {t.name!r}: BYTES values must be UTF-8 text") from None
    return values


def infer_request(msg: pb.ModelInferRequest) -> InferRequest:
    """The request as the REST edge sees it (pure)."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise BadRequestError(f"raw_input_contents has {len(raw)} entries for "
                              f"{len(msg.inputs)} inputs; send one per input, in order")
    inputs = [
        InferInput(name=t.name, shape=list(t.shape), datatype=t.datatype,
                   data=decode_raw(t.name, t.datatype, list(t.shape), raw[i]) if raw
                   else _contents(t),
                   parameters={k: _param(v) for k, v in t.parameters.items()})
        for i, t in enumerate(msg.inputs)
    ]
    outputs = [{"name": o.name, "parameters": {k: _param(v) for k, v in o.parameters.items()}}
               for o in msg.outputs]
    return InferRequest(inputs=inputs, id=msg.id or None,
                        parameters={k: _param(v) for k, v in msg.parameters.items()},
                        outputs=outputs)


def infer_response(deployment: str, result: Result, names: list[str]) -> pb.ModelInferResponse:
    tensors = [Tensor(n, result.outputs[n]) for n in names]
    return pb.ModelInferResponse(
        model_name=deployment, model_version=result.model or "", id=result.request_id,
        parameters={"reason": pb.InferParameter(string_param=result.reason.value),
                    "policy_version": pb.InferParameter(int64_param=result.policy_version)},
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype,
                                                         shape=t.shape) for t in tensors],
        raw_output_contents=[t.raw() for t in tensors])


class InferenceService:
    """The six OIP v2 methods, answering from ``proxy``'s deployments (method names are the
    proto's, which the handler table looks up)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.proxy.server.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelReadyResponse:
        rt = await self.proxy._runtime(request.name)
        return pb.ModelReadyResponse(ready=self.proxy.server.ready and rt.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="rendezvous", version=version("rendezvous-ml"),
                                         extensions=["rendezvous"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> pb.ModelMetadataResponse:
        rt = await self.proxy._runtime(request.name)
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=rt.name, versions=rt.policy.model_names(), platform="rendezvous",
            inputs=[meta(name=c.name, datatype=c.datatype.value, shape=[-1])
                    for c in rt.signature.inputs],
            outputs=[meta(name="predictions", datatype="BYTES", shape=[-1]),
                     meta(name="probabilities", datatype="FP64", shape=[-1, -1])])

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelInferResponse:
        proxy = self.proxy
        rt = await proxy._runtime(request.model_name)
        req = infer_request(request)
        inputs, n_rows = columns_from_oip(req, rt.signature)
        if n_rows > proxy.max_rows:
            raise TooManyRowsError(n_rows, proxy.max_rows)
        client_id = req.id or dict(context.invocation_metadata() or ()).get("x-request-id")
        result = await proxy._submit(rt, inputs, n_rows, str(client_id) if client_id else None,
                                     meta_from_parameters(req.parameters),
                                     request.SerializeToString(deterministic=True))
        proxy._check(result, rt)
        names = [name for name, _ in selected_outputs(req, list(result.outputs))]
        context.set_trailing_metadata((
            ("x-request-id", result.request_id), ("x-rendezvous-model", result.model or ""),
            ("x-rendezvous-reason", result.reason.value)))
        return infer_response(rt.name, result, names)


Method = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]]


def _guarded(method: Method) -> Method:
    """``method`` with Rendezvous errors turned into gRPC statuses (and the request id, when
    there is one, in the trailing metadata)."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(request, context)
        except RendezvousError as exc:
            rid = getattr(exc, "request_id", None)
            if rid:
                context.set_trailing_metadata((("x-request-id", rid),))
            await context.abort(grpc_code(exc), str(exc))
        except Exception:
            log.exception("unhandled error in gRPC %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

    return call


def handler(proxy: Proxy) -> grpc.GenericRpcHandler:
    """The generic handler serving ``inference.GRPCInferenceService`` from ``proxy``."""
    service = InferenceService(proxy)
    methods = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    return grpc.method_handlers_generic_handler(SERVICE, {
        m.name: grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(service, m.name)),
            request_deserializer=getattr(pb, m.input_type.name).FromString,
            response_serializer=getattr(pb, m.output_type.name).SerializeToString)
        for m in methods
    })
