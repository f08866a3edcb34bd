"""The drift reference a registration records: sketches of the training sample's columns and
of the model's own scores on that sample (``core.reference`` computes them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from rendezvous.core.reference import build_reference
from rendezvous.core.schema import Signature, example_columns
from rendezvous.errors import RendezvousError
from rendezvous.flavors import base as flavors

log = logging.getLogger(__name__)

MAX_ROWS = 100_000  # a larger sample is subsampled (evenly spaced rows)


def drift_reference(example: Any, signature: Signature, flavor: str, data: bytes,
                    meta: Mapping[str, Any]) -> dict[str, Any]:
    """The reference for a registration from its training sample ``example``. Scores come from
    loading the artifact as serving would, never with pickle; a model that cannot be loaded
    or called gets a reference of its inputs only."""
    n = len(example) if hasattr(example, "__len__") and not isinstance(example, Mapping) \
        else len(next(iter(example.values()))) if isinstance(example, Mapping) else 0
    step = max(1, -(-n // MAX_ROWS))
    if isinstance(example, Mapping):
        sample: Any = {k: np.asarray(v)[::step] for k, v in example.items()}
    elif hasattr(example, "iloc"):
        sample = example.iloc[::step]
    else:
        sample = np.asarray(example)[::step]
    columns = example_columns(sample, signature, rows=MAX_ROWS)
    outputs = None
    if not meta.get("pickle"):
        try:
            predictor = flavors.get(flavor).load(data, meta, signature, allow_pickle=False)
            arrays = {k: np.asarray(v) for k, v in columns.items()}
            n_rows = len(next(iter(arrays.values()))) if arrays else 0
            outputs = {k: np.asarray(v).tolist()
                       for k, v in predictor.predict(arrays, n_rows).items()}
        except (RendezvousError, ValueError, TypeError) as exc:
            log.warning("no score reference: the model could not score its sample (%s)", exc)
    return build_reference(columns, outputs)
