"""The garbage collector of a long-running process: set once start-up is over.

Serving allocates many short-lived containers (a decoded request alone is a dict of lists, one
per column), nearly all freed at once by reference counting. With CPython's default thresholds
(700 allocations) the collector runs a young collection every few requests, and about every
hundredth of those a full one, which walks every object the process holds that is not frozen.
Before and after, at c=32 on the ``rendezvous-4`` benchmark deployment:
``bench/results/gc/ab-rounds.md``.

``settle`` therefore moves everything loaded so far out of the collector's sight (``gc.freeze``)
and collects young objects far less often. Reference cycles (rare here: messages are
``gc=False`` structs) are still collected, later.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "settle"]

#: (young, middle, full): a young collection every 20,000 container allocations instead of
#: 700; a middle one every 20 young ones, a full one every 20 middle ones (8 million
#: allocations, minutes apart at full load).
THRESHOLDS = (20_000, 20, 20)


def settle() -> None:
    """Collect once, freeze what is alive (start-up's objects live as long as the process) and
    collect rarely from now on. Call when start-up is over, before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
