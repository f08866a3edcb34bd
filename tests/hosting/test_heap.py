"""The collector settings of a serving process and a model host (``hosting.heap``)."""

from __future__ import annotations

import json
import subprocess
import sys

from rendezvous.hosting import heap


def test_settle_freezes_start_up_and_collects_young_objects_rarely() -> None:
    # In a fresh interpreter: the test process's own collector stays as pytest set it.
    code = ("import gc, json; from rendezvous.hosting import heap; import numpy; "
            "before = gc.get_freeze_count(); heap.settle(); "
            "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    before, frozen, thresholds = json.loads(out)
    assert before == 0 and frozen > 10_000  # numpy and the rest of start-up, out of sight
    assert tuple(thresholds) == heap.THRESHOLDS
    assert thresholds[0] > 700  # CPython's default young threshold
