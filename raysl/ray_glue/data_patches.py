"""One measured fix to Ray Data 2.60's streaming executor, applied in every process that runs a view dataset.

The executor's scheduling loop waits for task completions (`ray.wait`, up to 0.1 s) only while some task
is active. With none active and none it may start (every CPU reserved by trials, or outputs backpressured
by a slow trainer) it goes round again at once: a busy loop. In a 2-trial sweep on 2 cores the two
SplitCoordinator actors, which run the executors of the Train datasets, used 387 s of CPU against 510 s for
the Train workers themselves (benchmarks/sweep_overhead.py). Here an idle step sleeps 10 ms first; a step
with active tasks is unchanged, and a task can start at most 10 ms later than it would have.

`install()` is idempotent. raysl.data.augment calls it at import, so it runs wherever the view dataset's
plan is unpickled (a multi-worker run's SplitCoordinator, a single Train worker running the executor
itself, a driver iterating it) without a runtime-env hook.
"""

from __future__ import annotations

import time

IDLE_SLEEP_S = 0.01


def install() -> bool:
    """Wrap the executor's process_completed_tasks; False (and nothing changed) if Ray's layout differs."""
    try:
        from ray.data._internal.execution import streaming_executor
    except ImportError:
        return False
    original = getattr(streaming_executor, "process_completed_tasks", None)
    if original is None or getattr(original, "_raysl_idle_sleep", False):
        return original is not None

    def process_completed_tasks(topology, *args, **kwargs):
        if not any(op.get_active_tasks() for op in topology):
            time.sleep(IDLE_SLEEP_S)
        return original(topology, *args, **kwargs)

    process_completed_tasks._raysl_idle_sleep = True
    streaming_executor.process_completed_tasks = process_completed_tasks
    return True
