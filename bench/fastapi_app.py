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
def predict(body: Features, request: Request) -> Prediction:
    # A sync endpoint, as FastAPI's docs advise for blocking work: it runs in the threadpool.
    model: Any = request.app.state.model
    return Prediction(prediction=int(model.predict(np.asarray([body.features]))[0]))


@app.post("/predict-async")
async def predict_async(body: Features, request: Request) -> Prediction:
    # The same work in an async endpoint, predicting on the event loop. Against the docs'
    # advice, but for a sub-millisecond predict the threadpool's hand-offs and GIL contention
    # cost more than blocking the loop briefly: the `fastapi-async` contender measures it.
    model: Any = request.app.state.model
    return Prediction(prediction=int(model.predict(np.asarray([body.features]))[0]))
