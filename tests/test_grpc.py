"""The OIP v2 gRPC endpoint, served next to the HTTP proxy in its event loop, tested with
``tritonclient.grpc`` at its defaults."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from rendezvous import ModelSpec, Policy, Registry, Role, errors
from rendezvous.hosting.serving import running
from rendezvous.http.errors import STATUS
from rendezvous.http.grpc import oip_v2_pb2 as pb
from rendezvous.http.grpc import serving
from rendezvous.http.grpc.service import CODES, grpc_code, infer_request
from tests.conftest import register_callable


@contextlib.asynccontextmanager
async def serve_grpc(home: Path, *deployments: str) -> AsyncIterator[tuple[str, str]]:
    """(HTTP base URL, gRPC address) of a real server with gRPC on a free port."""
    async with running(list(deployments), home=home, port=0) as s:
        proxy, url = s.edge
        async with serving(proxy, port=0) as address:
            assert address is not None
            yield url, address


def with_triton(address: str, calls: Callable[[Any], Any]) -> Any:
    """``calls(client)`` with a synchronous ``tritonclient.grpc`` client, in a thread so that
    the event loop serving it keeps running."""

    def run() -> Any:
        client = grpcclient.InferenceServerClient(address)
        try:
            return calls(client)
        finally:
            client.close()

    return asyncio.to_thread(run)


def deploy(registry: Registry, ref: str = "tests.models:doubler") -> str:
    model = register_callable(registry, "m", ref)
    registry.apply_policy("dep", Policy(deadline_ms=2000, models=[
        ModelSpec(model, Role.CHAMPION)]))
    return model


def inputs(x: list[float], y: list[float], datatype: str = "FP64") -> list[Any]:
    out = []
    for name, values in (("x", x), ("y", y)):
        inp = grpcclient.InferInput(name, [len(values)], datatype)
        inp.set_data_from_numpy(np.asarray(values, dtype=np.float64 if datatype == "FP64"
                                           else np.float32))
        out.append(inp)
    return out


async def test_tritonclient_grpc_at_its_defaults(registry: Registry, home: Path) -> None:
    model = deploy(registry)
    async with serve_grpc(home, "dep") as (_, address):
        live, ready, model_ready, meta, result = await with_triton(address, lambda c: (
            c.is_server_live(), c.is_server_ready(), c.is_model_ready("dep"),
            c.get_model_metadata("dep"), c.infer("dep", inputs([1.0, 2.0], [0.5, 0.0]))))
    assert live and ready and model_ready
    assert [i.name for i in meta.inputs] == ["x", "y"] and meta.versions == [model]
    np.testing.assert_array_equal(result.as_numpy("predictions"), [2.5, 4.0])
    response = result.get_response()
    assert response.model_version == model and response.id


async def test_outputs_matrix_input_ids_and_the_async_client(registry: Registry,
                                                            home: Path) -> None:
    import tritonclient.grpc.aio as aioclient

    deploy(registry, "tests.models:with_probabilities")
    async with serve_grpc(home, "dep") as (_, address):
        matrix = grpcclient.InferInput("input", [2, 2], "FP64")
        matrix.set_data_from_numpy(np.array([[2.0, 0.0], [0.0, 2.0]]))
        client = aioclient.InferenceServerClient(address)
        try:
            result = await client.infer(
                "dep", [matrix], request_id="grpc-1",
                outputs=[grpcclient.InferRequestedOutput("probabilities")])
        finally:
            await client.close()
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["probabilities"] and response.id == "grpc-1"
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 2) and probabilities[0, 1] > 0.5 > probabilities[1, 1]


@pytest.mark.parametrize(("call", "code", "says"), [
    (lambda c: c.infer("nope", inputs([1.0], [1.0])), "NOT_FOUND", "this server serves: dep"),
    (lambda c: c.infer("dep", inputs([1.0], [1.0], "FP32")), "INVALID_ARGUMENT",
     "datatype 'FP32' does not match the signature's 'FP64'"),
    (lambda c: c.infer("dep", inputs([1.0], [1.0]),
                       outputs=[grpcclient.InferRequestedOutput("scores")]),
     "INVALID_ARGUMENT", "output 'scores'"),
    (lambda c: c.get_model_metadata("nope"), "NOT_FOUND", "unknown deployment 'nope'"),
])
async def test_errors_are_grpc_statuses_with_the_fix(registry: Registry, home: Path,
                                                     call: Callable[[Any], Any], code: str,
                                                     says: str) -> None:
    deploy(registry)
    async with serve_grpc(home, "dep") as (_, address):
        with pytest.raises(InferenceServerException) as info:
            await with_triton(address, call)
    assert info.value.status() == f"StatusCode.{code}"
    assert says in info.value.message()


async def test_a_missed_deadline_is_deadline_exceeded(registry: Registry, home: Path) -> None:
    model = register_callable(registry, "slow", "tests.models:make_constant", value=1.0,
                              sleep_ms=400)
    registry.apply_policy("dep", Policy(deadline_ms=50, models=[
        ModelSpec(model, Role.CHAMPION)]))
    async with serve_grpc(home, "dep") as (_, address):
        with pytest.raises(InferenceServerException) as info:
            await with_triton(address, lambda c: c.infer("dep", inputs([1.0], [1.0])))
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_typed_contents_decode_like_raw_ones() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor
    msg = pb.ModelInferRequest(model_name="dep", inputs=[
        tensor(name="x", datatype="FP64", shape=[2],
               contents=pb.InferTensorContents(fp64_contents=[1.0, 2.0])),
        tensor(name="tag", datatype="BYTES", shape=[1],
               contents=pb.InferTensorContents(bytes_contents=[b"a"]))],
        parameters={"customer": pb.InferParameter(string_param="c-1")})
    req = infer_request(msg)
    assert [i.data for i in req.inputs] == [[1.0, 2.0], ["a"]]
    assert req.parameters == {"customer": "c-1"}


def test_every_http_error_code_has_a_grpc_status() -> None:
    assert {code for _, _, code in STATUS} <= set(CODES)
    assert grpc_code(errors.SlaMissError("r", 10)) is grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_code(errors.UnavailableError("x")) is grpc.StatusCode.UNAVAILABLE


async def test_grpc_is_off_unless_a_port_is_set(registry: Registry, home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(registry)
    monkeypatch.delenv("RENDEZVOUS_GRPC_PORT", raising=False)
    async with running(["dep"], home=home, port=0) as s, serving(s.edge[0]) as address:
        assert address is None
    monkeypatch.setenv("RENDEZVOUS_GRPC_PORT", "0")
    async with running(["dep"], home=home, port=0) as s, serving(s.edge[0]) as address:
        assert address is not None and address.startswith("127.0.0.1:")


def test_the_benchmarks_hand_encoded_grpc_body_is_a_model_infer_request() -> None:
    from bench.payloads import oip_grpc

    body = oip_grpc([0.5, -1.0, 300.0], "bench1")
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    req = infer_request(pb.ModelInferRequest.FromString(body[5:]))
    assert pb.ModelInferRequest.FromString(body[5:]).model_name == "bench1"
    (tensor,) = req.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("input-0", "FP64", [1, 3])
    assert tensor.data == [0.5, -1.0, 300.0]
