"""MLflow's scoring protocol, with payloads built by MLflow's own code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from mlflow.models.utils import convert_input_example_to_serving_input
from mlflow.utils.proto_json_utils import dump_input_data

from rendezvous import ModelSpec, Policy, Registry, Role
from rendezvous.core.schema import columns_from_mapping
from rendezvous.errors import BadRequestError, ValidationError
from rendezvous.http.mlflow import columns_from_csv, columns_from_json
from tests.conftest import XY, register_callable

Serve = Callable[..., Any]
FRAME = pd.DataFrame({"x": [1.0, 2.0], "y": [0.5, 0.0]})
EXPECTED = [2.5, 4.0]  # tests.models:doubler


def deploy(registry: Registry, name: str = "dep",
           ref: str = "tests.models:doubler") -> str:
    model = register_callable(registry, f"{name}-model", ref)
    registry.apply_policy(name, Policy(deadline_ms=2000, models=[
        ModelSpec(model, Role.CHAMPION)]))
    return model


PAYLOADS = {
    "dataframe_split": lambda: dump_input_data(FRAME),
    "dataframe_split (serving example)": lambda: convert_input_example_to_serving_input(FRAME),
    "dataframe_records": lambda: json.dumps(
        {"dataframe_records": FRAME.to_dict(orient="records")}),
    "instances (rows)": lambda: dump_input_data(FRAME.to_numpy(), inputs_key="instances"),
    "inputs (rows)": lambda: dump_input_data(FRAME.to_numpy()),
    "inputs (columns)": lambda: convert_input_example_to_serving_input(
        {"x": np.array([1.0, 2.0]), "y": np.array([0.5, 0.0])}),
    "inputs (records)": lambda: dump_input_data(FRAME.to_dict(orient="records")),
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
async def test_mlflow_payloads_score(registry: Registry, serve: Serve, kind: str) -> None:
    model = deploy(registry)
    body = PAYLOADS[kind]()
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/invocations", content=body,
                              headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": EXPECTED}
    assert r.headers["x-rendezvous-model"] == model and r.headers["x-request-id"]


async def test_csv_and_the_single_deployment_path(registry: Registry, serve: Serve) -> None:
    deploy(registry)
    async with serve("dep") as client:
        r = await client.post("/invocations", content=FRAME.to_csv(index=False),
                              headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": EXPECTED}


async def test_mlflows_scoring_client_works_unchanged(registry: Registry, serve: Serve) -> None:
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    deploy(registry)
    async with serve("dep") as client:
        netloc = urlsplit(str(client.base_url))
        scoring = ScoringServerClient(netloc.hostname, netloc.port)
        await asyncio.to_thread(scoring.wait_server_ready, timeout=30)
        response = await asyncio.to_thread(scoring.invoke, FRAME, {"channel": "web"})
    assert list(response.get_predictions(predictions_format="ndarray")) == EXPECTED


async def test_non_predictions_outputs_come_back_as_records(registry: Registry,
                                                            serve: Serve) -> None:
    deploy(registry, ref="tests.models:with_probabilities")
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/invocations",
                              json={"dataframe_records": [{"x": 2.0, "y": 0.0}]})
    assert r.json()["predictions"] == ["yes"]  # what MLflow answers for a classifier


async def test_invocations_with_two_deployments_names_them(registry: Registry,
                                                           serve: Serve) -> None:
    deploy(registry, "a")
    deploy(registry, "b")
    async with serve("a", "b") as client:
        r = await client.post("/invocations", content=dump_input_data(FRAME))
    assert r.status_code == 400
    assert "['a', 'b']" in r.json()["error"]
    assert "/v1/deployments/NAME/invocations" in r.json()["error"]


@pytest.mark.parametrize(("body", "ctype", "status", "says"), [
    ('{"inputs": [[1.0, 2.0]], "instances": [[1.0, 2.0]]}', "application/json", 400,
     "exactly one of"),
    ('{"dataframe_split": {"columns": ["x", "z"], "data": [[1.0, 2.0]]}}',
     "application/json", 422, "missing columns ['y']"),
    ('{"dataframe_records": [{"x": "a", "y": 1.0}]}', "application/json", 422,
     "expected FP64, got str"),
    ("x,y\n1.0,abc\n", "text/csv", 422, "column 'y' row 0: expected FP64"),
    ("<x/>", "application/xml", 400, "application/json or text/csv"),
    ("{", "application/json", 400, "malformed JSON"),
])
async def test_bad_mlflow_requests_are_4xx_with_the_fix(registry: Registry, serve: Serve,
                                                        body: str, ctype: str, status: int,
                                                        says: str) -> None:
    deploy(registry)
    async with serve("dep") as client:
        r = await client.post("/v1/deployments/dep/invocations", content=body,
                              headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert says in r.text


# -- pure ---------------------------------------------------------------------------------------


def test_dataframe_split_takes_its_columns_in_any_order() -> None:
    (cols, n), meta = columns_from_json(
        {"dataframe_split": {"columns": ["y", "x"], "data": [[1, 2]], "index": [7]},
         "params": {"k": 1}}, XY)
    assert (cols, n, meta) == ({"x": [2.0], "y": [1.0]}, 1, {"k": "1"})


def test_csv_parses_text_by_the_signature() -> None:
    assert columns_from_csv(b"y,x\r\n1,2\r\n3,4.5\r\n", XY) == ({"x": [2.0, 4.5],
                                                                 "y": [1.0, 3.0]}, 2)
    with pytest.raises(BadRequestError, match="header row"):
        columns_from_csv(b"x,y\n", XY)
    with pytest.raises(ValidationError, match="CSV line 3: 1 values"):
        columns_from_csv(b"x,y\n1,2\n3\n", XY)


@pytest.mark.parametrize(("columns", "says"), [
    ({"x": [1.0]}, "missing columns ['y']"),
    ({"x": [1.0], "y": [1.0, 2.0]}, "column 'y': 2 rows"),
    ({"x": [], "y": []}, "no rows"),
    ({"x": 1.0, "y": [1.0]}, "column 'x': expected a list"),
    ([1.0], "expected an object of columns"),
])
def test_columns_from_mapping_names_the_problem(columns: Any, says: str) -> None:
    with pytest.raises(ValidationError, match=says.replace("[", r"\[").replace("]", r"\]")):
        columns_from_mapping(columns, XY)
