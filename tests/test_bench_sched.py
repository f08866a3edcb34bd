"""``bench.sched_trace`` reads the kernel's trace text as tracefs writes it (lines copied
from a recording on this machine, times and pids changed to make the arithmetic plain)."""

from __future__ import annotations

import pytest
from bench.sched_trace import summarize

# The serving loop (pid 100) runs 1 ms, is preempted by a model host (200) for 0.5 ms, runs
# 1 ms, sleeps until the host wakes it 2 ms later, runs 0.5 ms more.
TRACE = """\
# tracer: nop
      rendezvous-300     [001] d..2.  10.000000: sched_switch: prev_comm=rendezvous prev_pid=300 prev_prio=120 prev_state=S ==> next_comm=rendezvous next_pid=100 next_prio=120
      rendezvous-100     [001] d..2.  10.001000: sched_switch: prev_comm=rendezvous prev_pid=100 prev_prio=120 prev_state=R ==> next_comm=python3 next_pid=200 next_prio=125
         python3-200     [001] d..2.  10.001500: sched_switch: prev_comm=python3 prev_pid=200 prev_prio=125 prev_state=S ==> next_comm=rendezvous next_pid=100 next_prio=120
      rendezvous-100     [001] d..2.  10.002500: sched_switch: prev_comm=rendezvous prev_pid=100 prev_prio=120 prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120
             wrk-400     [000] d..5.  10.003000: sched_waking: comm=python3 pid=200 prio=125 target_cpu=000
         python3-200     [000] d..5.  10.004500: sched_waking: comm=rendezvous pid=100 prio=120 target_cpu=001
          <idle>-0       [001] d..2.  10.004510: sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=rendezvous next_pid=100 next_prio=120
      rendezvous-100     [001] d..2.  10.005010: sched_switch: prev_comm=rendezvous prev_pid=100 prev_prio=120 prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120
"""  # noqa: E501 (tracefs's lines as they are)


def test_the_loop_s_time_is_split_into_running_preempted_and_asleep_by_whom() -> None:
    s = summarize(TRACE, 100, {200: "model host hgb@1"})
    assert s.span_s == pytest.approx(0.00501)
    assert s.on_s == pytest.approx(0.0025)
    assert s.waiting_s == pytest.approx(0.0005)
    assert s.asleep_s == pytest.approx(0.00201)
    assert dict(s.preempted_by) == {"model host hgb@1": [pytest.approx(0.0005)]}
    # Woken by the host's sched_waking, not by the wake-up of the host itself (by wrk).
    assert dict(s.woken_by) == {"model host hgb@1": [pytest.approx(0.00201)]}
    table = s.table()
    assert "on a core 50%, waiting for a core 10%, asleep 40%" in table
    assert "| waiting for a core, preempted by | model host hgb@1 | 1 | 10.0% | 500 | 500 |" \
        in table


def test_an_empty_trace_says_nothing_was_traced() -> None:
    s = summarize("# tracer: nop\n", 100)
    assert (s.span_s, s.on_s, s.waiting_s, s.asleep_s) == (0.0, 0.0, 0.0, 0.0)
    assert s.table().startswith("Traced 0.00 s")
