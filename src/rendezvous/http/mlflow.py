"""MLflow's scoring protocol: ``POST /v1/deployments/{d}/invocations`` (and ``POST
/invocations`` when the server serves exactly one deployment), so that clients written for
``mlflow models serve`` work unchanged.

Bodies as MLflow's scoring server takes them: JSON with exactly one of ``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs`` (plus optional ``params``, kept as the
request's tags), or CSV (``Content-Type: text/csv``, a header row of column names). The answer
is MLflow's ``{"predictions": [...]}`` with Rendezvous' headers (``x-request-id``,
``x-rendezvous-model``, ``x-rendezvous-reason``).

>>> # curl -H 'Content-Type: application/json' localhost:8000/invocations \\
>>> #   -d '{"dataframe_split": {"columns": ["x", "y"], "data": [[1.0, 2.0]]}}'
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

import msgspec

from rendezvous.core.messages import Result
from rendezvous.core.schema import Signature, columns_from_mapping, columns_from_records
from rendezvous.errors import BadRequestError, TooManyRowsError, ValidationError
from rendezvous.http.oip import meta_from_parameters
from rendezvous.http.reply import Reply

if TYPE_CHECKING:
    from rendezvous.http.app import Proxy

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode

Columns = tuple[dict[str, list[Any]], int]


def _rows(rows: Any, names: list[str], sig: Signature, where: str) -> Columns:
    """Rows given as lists, their values in the order of ``names``."""
    if not isinstance(rows, list) or not rows:
        raise ValidationError(f"{where}: expected a non-empty list of rows")
    k = len(names)
    bad = [f"{where} row {i}: expected a list of {k} values {names}, got {str(r)[:40]}"
           for i, r in enumerate(rows) if not isinstance(r, list) or len(r) != k]
    if bad:
        raise ValidationError("input does not match the deployment's signature", bad[:10])
    return columns_from_mapping({n: [r[j] for r in rows] for j, n in enumerate(names)}, sig)


def _split(doc: Any, sig: Signature) -> Columns:
    if not isinstance(doc, dict) or "data" not in doc:
        raise BadRequestError('dataframe_split must be an object {"columns": [...], '
                              '"data": [[...], ...]} (pandas\' orient="split")')
    names = doc.get("columns", sig.names)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequestError(f"dataframe_split columns must be a list of names, e.g. "
                              f"{sig.names}")
    return _rows(doc["data"], names, sig, "dataframe_split")


def _tensor_input(doc: Any, sig: Signature, key: str) -> Columns:
    """``instances`` / ``inputs``: records, rows in signature order, or columns by name; a
    single-column signature also takes a plain list of values."""
    if isinstance(doc, dict):
        return columns_from_mapping(doc, sig)
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        return columns_from_records(doc, sig)
    if isinstance(doc, list) and doc and not isinstance(doc[0], list) and len(sig.inputs) == 1:
        return columns_from_mapping({sig.names[0]: doc}, sig)
    return _rows(doc, sig.names, sig, key)


def columns_from_json(doc: Any, sig: Signature) -> tuple[Columns, dict[str, str]]:
    """(columns and row count, tags from ``params``) of an MLflow JSON body. Pure."""
    keys = [k for k in FORMATS if isinstance(doc, dict) and k in doc]
    if len(keys) != 1:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise BadRequestError(f"an MLflow scoring request is a JSON object with exactly one of "
                              f"{list(FORMATS)} (and optionally 'params'); got {got}")
    key = keys[0]
    meta = meta_from_parameters(doc.get("params") or {})
    if key == "dataframe_split":
        return _split(doc[key], sig), meta
    if key == "dataframe_records":
        return columns_from_records(doc[key], sig), meta
    return _tensor_input(doc[key], sig, key), meta


def columns_from_csv(body: bytes, sig: Signature) -> Columns:
    """Columns of a CSV body whose first row names the columns. Pure."""
    try:
        rows = list(csv.reader(io.StringIO(body.decode())))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadRequestError(f"unreadable CSV body: {exc}; send UTF-8 CSV with a header "
                              f"row {','.join(sig.names)}") from None
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise BadRequestError(f"a CSV body needs a header row ({','.join(sig.names)}) and at "
                              "least one row of values")
    header, data = rows[0], rows[1:]
    bad = [f"CSV line {i + 2}: {len(r)} values, the header names {len(header)}"
           for i, r in enumerate(data) if len(r) != len(header)]
    if bad:
        raise ValidationError("input does not match the deployment's signature", bad[:10])
    return columns_from_mapping({n: [r[j] for r in data] for j, n in enumerate(header)}, sig,
                                strict=False)


def answer(result: Result) -> bytes:
    """MLflow's response body: the ``predictions`` output, else every output as records."""
    outputs = result.outputs
    if "predictions" in outputs:
        return _encode({"predictions": outputs["predictions"]})
    names = list(outputs)
    rows = zip(*(outputs[n] for n in names), strict=True)
    return _encode({"predictions": [dict(zip(names, row, strict=True)) for row in rows]})


async def invocations(proxy: Proxy, params: dict[str, str], body: bytes,
                      headers: dict[str, str]) -> Reply:
    """The route handler for both paths (``params`` has ``d`` on the per-deployment one)."""
    name = params.get("d")
    if name is None:
        served = sorted(proxy.server.runtimes)
        if len(served) != 1:
            raise BadRequestError(
                f"POST /invocations needs exactly one served deployment and this server serves "
                f"{served or 'none'}; use POST /v1/deployments/NAME/invocations")
        name = served[0]
    rt = await proxy._runtime(name)
    ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    meta: dict[str, str] = {}
    if ctype == "text/csv":
        inputs, n_rows = columns_from_csv(body, rt.signature)
    elif ctype in ("application/json", ""):
        try:
            doc = _decode.decode(body)
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"malformed JSON: {exc}") from None
        (inputs, n_rows), meta = columns_from_json(doc, rt.signature)
    else:
        raise BadRequestError(f"content type {ctype!r} is not accepted; send application/json "
                              "or text/csv")
    if n_rows > proxy.max_rows:
        raise TooManyRowsError(n_rows, proxy.max_rows)
    result = await proxy._submit(rt, inputs, n_rows, headers.get("x-request-id"), meta, body)
    proxy._check(result, rt)
    return Reply(200, answer(result), proxy._headers(result))


async def ping(*_: Any) -> Reply:
    """MLflow's health check (``GET /ping``, ``GET /health``): the process is up."""
    return Reply(200, b"\n", [(b"content-type", b"text/plain; charset=utf-8")])
