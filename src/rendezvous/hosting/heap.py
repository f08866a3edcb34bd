"""The collector's view of a long-running process's heap.

A process that has loaded its libraries (and a model host its model: scikit-learn, numpy and
the estimator are some 160,000 tracked objects) keeps them to its end. Left in the collector's
oldest generation, every full collection walks them all again; and a process whose batches
create many short-lived containers (a shadow model's host decodes about 200 requests of 20
lists each at a time) triggers full collections often, since the objects alive at each young
collection look long-lived to it. ``settle()`` moves what is there into the permanent
generation, out of the collector's sight: a full collection then walks only what was made
since.

Measured on the serving benchmark's models, one host's scoring of a 200-request batch
(``BatchScorer.score`` and the encoding of its scores, in-process trials): 28 to 6 µs per
request for the logistic canary, 44 to 20 µs for the gradient-boosted challenger; batches of 17
cost the same either way (bench/README.md, "Collector").
"""

from __future__ import annotations

import gc

__all__ = ["settle"]


def settle() -> None:
    """Collect once, then freeze everything left: call it when start-up is over (libraries
    imported, models loaded and warmed up), before serving."""
    gc.collect()
    gc.freeze()
