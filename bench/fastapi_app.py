"""The hand-written baseline: a plain FastAPI app that loads the model once per worker and
predicts per request, as most teams would write it.

Served by gunicorn with uvicorn workers::

    BENCH_MODEL_PATH=bench/.work/fastapi/model/model.joblib \\
        bench/.venv/bin/gunicorn -w 2 -k uvicorn_worker.UvicornWorker bench.fastapi_app:app

Runs in ``bench/.venv`` (FastAPI, joblib), never in the project's environment.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import joblib
import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel

MODEL_PATH_ENV = "BENCH_MODEL_PATH"


class Features(BaseModel):
    """One row to score."""

    features: list[float]


class Prediction(BaseModel):
    """The predicted class."""

    prediction: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.model = joblib.load(os.environ[MODEL_PATH_ENV])
    yield


app = FastAPI(title="bench baseline", lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
async def predict(body: Features, request: Request) -> Prediction:
    # An async endpoint that predicts inline. FastAPI's docs advise a sync endpoint (run in
    # the threadpool) for blocking work, but for a sub-millisecond predict the threadpool's
    # hand-offs and GIL contention cost more than they save: measured here, async did
    # 1,900-2,400 req/s with p99 46-73 ms at c=32 against 1,190-1,760 req/s with p99
    # 65-245 ms for sync. The baseline should be the faster of the two.
    model: Any = request.app.state.model
    return Prediction(prediction=int(model.predict(np.asarray([body.features]))[0]))
