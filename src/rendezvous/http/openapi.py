"""The OpenAPI 3.1 document served at ``/openapi.json``: every endpoint of the proxy, with the
Open Inference Protocol v2 request and response schemas and the error body.

Written by hand, as data, beside the route table it describes; ``tests/test_openapi.py`` checks
that every route is in it and fuzzes a live server against it (schemathesis), so the two cannot
drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

import msgspec

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERRORS = {
    "400": "The body cannot be decoded, or a request id is invalid",
    "401": "A bearer token is missing or wrong",
    "404": "Unknown deployment or path",
    "405": "Method not allowed on this path",
    "408": "The client sent the request too slowly",
    "409": "A request id reused with other data, or a policy changed meanwhile",
    "413": "The body or the number of rows exceeds its limit",
    "422": "The input does not match the deployment's signature",
    "500": "Every candidate model failed",
    "503": "The server is starting, stopping, or cannot write its stream log",
    "504": "No model answered before the deadline (sla_miss)",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {c: {"description": _ERRORS[c], "content": _json(_ref("Error"))} for c in codes}


# Statuses any request may meet before its handler runs (middlewares, routing).
_ALWAYS = ("400", "404", "405", "408")
_DEPLOYMENT = {"name": "d", "in": "path", "required": True, "description": "Deployment name",
               "schema": {"type": "string"}}
_REQUEST_ID = {"name": "x-request-id", "in": "header", "required": False,
               "description": "Client request id (idempotent retries, per deployment)",
               "schema": {"type": "string"}}
_PREDICT_ERRORS = ("401", "409", "413", "422", "500", "503", "504")


def _get(summary: str, schema: dict[str, Any], *errors: str, params: bool = True,
         ok: str = "200", content: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        ok: {"description": "OK", "content": content or _json(schema)},
        **_errors(*_ALWAYS, *errors)}}
    if params:
        op["parameters"] = [_DEPLOYMENT]
    return {"get": op}


def _post(summary: str, body: dict[str, Any], schema: dict[str, Any], *errors: str,
          parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": parameters,
        "requestBody": {"required": True, "content": _json(body)},
        "responses": {"200": {"description": "OK", "content": _json(schema)},
                      **_errors(*_ALWAYS, *errors)}}}


_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "code"], "properties": {
        "error": {"type": "string"}, "code": {"type": "string"},
        "problems": {"type": "array", "items": {"type": "string"}},
        "request_id": {"type": "string"}, "reason": {"type": "string"}}},
    "InferInput": {"type": "object", "required": ["name", "shape", "datatype", "data"],
                   "properties": {
                       "name": {"type": "string"},
                       "shape": {"type": "array", "items": {"type": "integer"}},
                       "datatype": {"type": "string", "enum": [
                           "BOOL", "INT32", "INT64", "FP32", "FP64", "BYTES"]},
                       "data": {"type": "array"},
                       "parameters": {"type": "object"}}},
    "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _ref("InferInput")},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": {"type": "object"}}}},
    "InferOutput": {"type": "object", "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string"}, "data": {"type": "array"}}},
    "InferResponse": {"type": "object", "required": ["model_name", "id", "outputs"],
                      "properties": {
                          "model_name": {"type": "string"},
                          "model_version": {"type": ["string", "null"]},
                          "id": {"type": "string"},
                          "parameters": {"type": "object"},
                          "outputs": {"type": "array", "items": _ref("InferOutput")}}},
    "Records": {"oneOf": [
        {"type": "array", "items": {"type": "object"}},
        {"type": "object", "required": ["records"], "properties": {
            "records": {"type": "array", "items": {"type": "object"}},
            "meta": {"type": "object"}}}]},
    "PredictResponse": {"type": "object",
                        "required": ["request_id", "model", "reason", "policy_version"],
                        "properties": {
                            "request_id": {"type": "string"},
                            "model": {"type": ["string", "null"]},
                            "reason": {"type": "string"},
                            "policy_version": {"type": "integer"}},
                        "additionalProperties": {"type": "array"}},
    "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"],
                       "properties": {"name": {"type": "string"},
                                      "datatype": {"type": "string"},
                                      "shape": {"type": "array", "items": {"type": "integer"}}}},
    "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"],
                      "properties": {
                          "name": {"type": "string"},
                          "versions": {"type": "array", "items": {"type": "string"}},
                          "platform": {"type": "string"},
                          "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                          "outputs": {"type": "array", "items": _ref("TensorMetadata")},
                          "parameters": {"type": "object"}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                       "properties": {"name": {"type": "string"},
                                      "version": {"type": "string"},
                                      "extensions": {"type": "array",
                                                     "items": {"type": "string"}}}},
    "Status": {"type": "object", "description": "The monitor's live statistics, the policy "
               "version, the live models and the backlog of writes being retried"},
    "MlflowInput": {"type": "object", "description": "One of MLflow's scoring payloads: "
                    "dataframe_split, dataframe_records, instances or inputs (CSV as text/csv)",
                    "properties": {"dataframe_split": {"type": "object"},
                                   "dataframe_records": {"type": "array"},
                                   "instances": {"type": "array"},
                                   "inputs": {}}},
    "MlflowOutput": {"type": "object", "required": ["predictions"],
                     "properties": {"predictions": {}}},
    "AdminResult": {"type": "object",
                    "required": ["deployment", "policy_version", "champion"],
                    "properties": {"deployment": {"type": "string"},
                                   "policy_version": {"type": "integer"},
                                   "champion": {"type": ["string", "null"]}}},
}


def _admin(op: str, summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    post: dict[str, Any] = {
        "summary": summary, "security": [{"bearer": []}], "parameters": [_DEPLOYMENT],
        "responses": {"200": {"description": "The deployment's new policy",
                              "content": _json(_ref("AdminResult"))},
                      **_errors(*_ALWAYS, "401", "409", "422", "503")}}
    if body is not None:
        post["requestBody"] = {"required": True, "content": _json(body)}
    return {f"/v1/admin/deployments/{{d}}/{op}": {"post": post}}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Rendezvous", "version": "1",
             "description": "Every model scores every request; the best answer ready before "
                            "the deadline wins. Open Inference Protocol v2 and JSON records."},
    "paths": {
        "/v2/health/live": _get("Liveness", {"type": "object", "properties": {
            "live": {"type": "boolean"}}}, params=False),
        "/v2/health/ready": {"get": {
            "summary": "Readiness: started, and the stream log can be written",
            "responses": {
                "200": {"description": "Ready", "content": _json({"type": "object"})},
                "503": {"description": "Not ready", "content": _json({"type": "object"})},
                **_errors(*_ALWAYS)}}},
        "/v2": _get("Server metadata (OIP v2)", _ref("ServerMetadata"), params=False),
        "/v2/models/{d}": _get("Model metadata (OIP v2)", _ref("ModelMetadata")),
        "/v2/models/{d}/ready": {"get": {
            "summary": "Model readiness (OIP v2)", "parameters": [_DEPLOYMENT],
            "responses": {
                "200": {"description": "Ready", "content": _json({"type": "object"})},
                "503": {"description": "Not ready", "content": _json({"type": "object"})},
                **_errors(*_ALWAYS)}}},
        "/v2/models/{d}/infer": _post(
            "Inference (OIP v2 tensors)", _ref("InferRequest"), _ref("InferResponse"),
            *_PREDICT_ERRORS, parameters=[_DEPLOYMENT, _REQUEST_ID]),
        "/v1/deployments/{d}/predict": _post(
            "Inference on JSON records", _ref("Records"), _ref("PredictResponse"),
            *_PREDICT_ERRORS, parameters=[_DEPLOYMENT, _REQUEST_ID]),
        "/v1/deployments/{d}/invocations": _post(
            "Inference with MLflow scoring-server payloads", _ref("MlflowInput"),
            _ref("MlflowOutput"), *_PREDICT_ERRORS, parameters=[_DEPLOYMENT, _REQUEST_ID]),
        "/invocations": _post(
            "MLflow scoring-server inference when one deployment is served",
            _ref("MlflowInput"), _ref("MlflowOutput"), *_PREDICT_ERRORS,
            parameters=[_REQUEST_ID]),
        "/ping": _get("Liveness, as MLflow's scoring server answers it", {}, params=False,
                      content={"text/plain": {"schema": {"type": "string"}}}),
        "/health": _get("Liveness, as MLflow's scoring server answers it", {}, params=False,
                        content={"text/plain": {"schema": {"type": "string"}}}),
        "/v1/deployments/{d}/status": _get("Live statistics of a deployment", _ref("Status")),
        "/v1/deployments": _get("Deployments served", {"type": "object", "properties": {
            "deployments": {"type": "array", "items": {"type": "string"}}}}, params=False),
        **_admin("reload", "Load the deployment's current policy now", None),
        **_admin("promote", "Make a model the champion",
                 {"type": "object", "required": ["model"],
                  "properties": {"model": {"type": "string"}}}),
        **_admin("rollback", "Restore the policy the current one replaced", None),
        **_admin("apply", "Record a policy once every model it adds has loaded and warmed up",
                 {"type": "object", "required": ["policy"],
                  "properties": {"policy": {"type": "object"}, "note": {"type": "string"}}}),
        **{f"/v1/deployments/{{d}}/{doc}": _get(summary, {"type": "object"})
           for doc, summary in (
               ("compare", "Every model against the champion on the same requests"),
               ("drift", "Canary and input-column drift against the training reference"),
               ("accuracy", "Live accuracy (or MAE, RMSE) per model from feedback labels"),
               ("alarms", "Alarm states with since and evidence"),
               ("windows", "Per-window statistics (what the dashboard plots)"))},
        "/v1/deployments/{d}/feedback": {"post": {
            "summary": "Labels for earlier requests: one {request_id, label} or "
                       "{feedback: [...]}",
            "parameters": [_DEPLOYMENT],
            "requestBody": {"required": True, "content": _json({"type": "object"})},
            "responses": {"202": {"description": "What was accepted, rejected (and why) and "
                                                 "duplicated", "content": _json({
                                                     "type": "object"})},
                          **_errors(*_ALWAYS, "413", "422", "503")}}},
        "/dashboard": _get("The live dashboard (HTML)", {}, params=False,
                           content={"text/html": {"schema": {"type": "string"}}}),
        "/dashboard/{asset}": {"get": {
            "summary": "A file of the dashboard (its script, styles, plotting library)",
            "parameters": [{"name": "asset", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file", "content": {
                "text/html": {"schema": {"type": "string"}},
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}}}},
                **_errors(*_ALWAYS)}}},
        "/metrics": _get("Prometheus metrics", {}, params=False,
                         content={"text/plain": {"schema": {"type": "string"}}}),
        "/openapi.json": _get("This document", {"type": "object"}, params=False),
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}

ENCODED = msgspec.json.encode(DOCUMENT)
