"""Open Inference Protocol REST, complete: the binary tensor data extension, output selection
and parameters, tested with the clients Triton and KServe users have, at their defaults."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.core import messages
from rendezvous.core.schema import columns_from_oip
from rendezvous.errors import BadRequestError, ValidationError
from rendezvous.http.oip import parse_request
from rendezvous.http.tensors import decode_raw, encode_raw
from tests.conftest import XY, register_callable
from tests.test_e2e import read_topic

Serve = Callable[..., Any]


def deploy(registry: Registry, ref: str = "tests.models:doubler") -> str:
    model = register_callable(registry, "m", ref)
    registry.apply_policy("dep", Policy(deadline_ms=2000, models=[
        ModelSpec(model, Role.CHAMPION)]))
    return model


# -- pure: raw tensors and the binary body ------------------------------------------------------


@pytest.mark.parametrize(("datatype", "values"), [
    ("FP64", [1.5, -2.0, 0.0]), ("FP32", [1.5, 2.25]), ("INT64", [1, -2, 3]),
    ("INT32", [7]), ("UINT8", [0, 255]), ("BOOL", [True, False]), ("BYTES", ["a", "", "é"]),
])
def test_raw_tensors_round_trip(datatype: str, values: list[Any]) -> None:
    assert decode_raw("t", datatype, [len(values)], encode_raw(values, datatype)) == values


@pytest.mark.parametrize(("datatype", "shape", "raw", "says"), [
    ("FP64", [2], b"\x00" * 12, "needs 16 bytes, got 12"),
    ("BYTES", [2], b"\x01\x00\x00\x00a", "says 2 elements, the binary data holds 1"),
    ("BYTES", [1], b"\x05\x00\x00\x00ab", "says 5 bytes, 2 remain"),
    ("COMPLEX", [1], b"", "not an OIP datatype"),
])
def test_bad_raw_tensors_name_the_input_and_the_problem(datatype: str, shape: list[int],
                                                        raw: bytes, says: str) -> None:
    with pytest.raises(ValidationError, match=says) as info:
        decode_raw("x", datatype, shape, raw)
    assert "input 'x'" in str(info.value)


def binary_body(values: dict[str, list[float]], **head: Any) -> tuple[bytes, str]:
    raws = {k: np.asarray(v, dtype="<f8").tobytes() for k, v in values.items()}
    doc = {"inputs": [{"name": k, "shape": [len(v)], "datatype": "FP64",
                       "parameters": {"binary_data_size": len(raws[k])}}
                      for k, v in values.items()], **head}
    text = json.dumps(doc).encode()
    return text + b"".join(raws.values()), str(len(text))


def test_a_binary_body_decodes_to_the_same_columns_as_json() -> None:
    body, length = binary_body({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    cols, n = columns_from_oip(parse_request(body, length), XY)
    assert (cols, n) == ({"x": [1.0, 2.0], "y": [3.0, 4.0]}, 2)


@pytest.mark.parametrize(("mangle", "says"), [
    (lambda b, n: (b, "abc"), "must be the byte length of the JSON head"),
    (lambda b, n: (b, str(len(b) + 1)), "must be the byte length of the JSON head"),
    (lambda b, n: (b[:-3], n), "runs past the end of the body"),
    (lambda b, n: (b + b"xx", n), "2 bytes follow the binary inputs"),
    (lambda b, n: (b, str(int(n) - 1)), "malformed JSON head"),
    (lambda b, n: (b[:int(n)], None), "need the Inference-Header-Content-Length header"),
])
def test_bad_binary_bodies_are_400_with_the_fix(mangle: Callable[[bytes, str], Any],
                                                 says: str) -> None:
    body, length = binary_body({"x": [1.0], "y": [2.0]})
    with pytest.raises(BadRequestError, match=says):
        parse_request(*mangle(body, length))


# -- live: tritonclient.http and kserve -----------------------------------------------------


def with_triton_http(url: str, calls: Callable[[Any], Any]) -> Any:
    """``calls(client)`` with a ``tritonclient.http`` client, in a thread of its own: the
    client is synchronous (gevent), and its connections belong to the thread that made them."""
    import tritonclient.http as httpclient

    def run() -> Any:
        triton = httpclient.InferenceServerClient(urlsplit(url).netloc)
        try:
            return calls(triton)
        finally:
            triton.close()

    return asyncio.to_thread(run)


def xy_inputs(module: Any, x: list[float], y: list[float], *, binary: bool = True) -> list[Any]:
    inputs = []
    for name, values in (("x", x), ("y", y)):
        inp = module.InferInput(name, [len(values)], "FP64")
        inp.set_data_from_numpy(np.asarray(values, dtype=np.float64), binary_data=binary)
        inputs.append(inp)
    return inputs


async def test_tritonclient_http_at_its_defaults(registry: Registry, serve: Serve) -> None:
    import tritonclient.http as httpclient

    model = deploy(registry)
    async with serve("dep") as client:
        inputs = xy_inputs(httpclient, [1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
        ready, result = await with_triton_http(str(client.base_url), lambda triton: (
            triton.is_server_ready() and triton.is_model_ready("dep"),
            triton.infer("dep", inputs)))
    assert ready
    np.testing.assert_array_equal(result.as_numpy("predictions"), [2.5, 4.5, 6.5])
    response = result.get_response()
    assert response["model_version"] == model
    assert response["outputs"][0]["parameters"]["binary_data_size"] == 24


async def test_json_outputs_selected_outputs_and_parameters(registry: Registry,
                                                            serve: Serve) -> None:
    import tritonclient.http as httpclient

    model = deploy(registry, "tests.models:with_probabilities")
    async with serve("dep") as client:
        both, only = await with_triton_http(str(client.base_url), lambda triton: (
            triton.infer(
                "dep", xy_inputs(httpclient, [2.0, 0.0], [0.0, 2.0], binary=False),
                outputs=[httpclient.InferRequestedOutput("predictions", binary_data=False),
                         httpclient.InferRequestedOutput("probabilities", binary_data=True)],
                parameters={"customer": "c-17"}, request_id="req-binary-1"),
            triton.infer("dep", xy_inputs(httpclient, [1.0], [0.0]),
                         outputs=[httpclient.InferRequestedOutput("probabilities")])))
    predictions, probabilities = both.get_response()["outputs"]
    assert predictions["data"] == ["yes", "no"] and "parameters" not in predictions
    assert probabilities["parameters"]["binary_data_size"] == 32
    assert both.as_numpy("probabilities").shape == (2, 2)
    assert [o["name"] for o in only.get_response()["outputs"]] == ["probabilities"]
    assert both.get_response()["id"] == "req-binary-1"
    requests = [messages.request_decoder.decode(b)
                for b in await read_topic(registry.home, messages.topic("dep", "input"))]
    assert requests[0].meta == {"customer": "c-17"}  # protocol switches are not tags
    assert both.get_response()["model_version"] == model


async def test_an_unknown_output_is_a_400_naming_the_outputs(registry: Registry,
                                                             serve: Serve) -> None:
    deploy(registry)
    async with serve("dep") as client:
        r = await client.post("/v2/models/dep/infer", json={
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]},
                       {"name": "y", "shape": [1], "datatype": "FP64", "data": [1.0]}],
            "outputs": [{"name": "scores"}]})
    assert r.status_code == 400
    assert "'scores'" in r.json()["error"] and "['predictions']" in r.json()["error"]


async def test_bad_binary_requests_are_400_over_http(registry: Registry, serve: Serve) -> None:
    deploy(registry)
    body, length = binary_body({"x": [1.0], "y": [2.0]})
    async with serve("dep") as client:
        short = await client.post("/v2/models/dep/infer", content=body[:-1],
                                   headers={"Inference-Header-Content-Length": length})
        wrong_type = await client.post(
            "/v2/models/dep/infer", content=body.replace(b'"FP64"', b'"FP32"', 1),
            headers={"Inference-Header-Content-Length": length})
    assert short.status_code == 400 and "runs past the end" in short.json()["error"]
    assert wrong_type.status_code == 422  # 8 bytes read as FP32 x2 for shape [1]
    assert "input 'x'" in wrong_type.json()["error"]


KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
import kserve

async def main(url):
    rest = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
    try:
        inputs = [kserve.InferInput(n, [2], "FP64") for n in ("x", "y")]
        inputs[0].set_data_from_numpy(np.array([1.0, 2.0]))
        inputs[1].set_data_from_numpy(np.array([0.0, 1.0]))
        request = kserve.InferRequest("dep", infer_inputs=inputs)
        headers = {}
        response = await rest.infer(url, request, model_name="dep", response_headers=headers)
    finally:
        await rest.close()
    print(json.dumps({"binary": bool(request.to_rest()[1]),
                      "predictions": response.outputs[0].as_numpy().tolist(),
                      "model": headers["x-rendezvous-model"]}))

asyncio.run(main(sys.argv[1]))
"""


async def test_kserve_rest_client(registry: Registry, serve: Serve) -> None:
    # In a process of its own: kserve's and tritonclient's gRPC stubs both define inference.*
    # in protobuf's process-wide pool, so the two cannot be imported into one process.
    # kserve's default protocol is its v1 API (/v1/models/m:predict); v2 is the OIP one.
    model = deploy(registry)
    async with serve("dep") as client:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KSERVE_CLIENT, str(client.base_url),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    answer = json.loads(out.decode().strip().splitlines()[-1])
    assert answer == {"binary": True, "predictions": [2.0, 5.0], "model": model}
