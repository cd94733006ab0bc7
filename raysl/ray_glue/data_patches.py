"""Two fixes to Ray Data 2.60, applied in every process that builds or runs a view dataset: the streaming
executor's idle loop (below) and the Parquet reader's sampling (skip_parquet_sampling).

The executor's scheduling loop waits for task completions (`ray.wait`, up to 0.1 s) only while some task
is active. With none active and none it may start (every CPU reserved by trials, or outputs backpressured
by a slow trainer) it goes round again at once: a busy loop. In a 2-trial sweep on 2 cores the two
SplitCoordinator actors, which run the executors of the Train datasets, used 387 s of CPU against 510 s for
the Train workers themselves (benchmarks/sweep_overhead.py). Here an idle step sleeps 10 ms first; a step
with active tasks is unchanged, and a task can start at most 10 ms later than it would have.

`install()` is idempotent. raysl.ray_glue.augment_actor calls it at import, so it runs wherever the view dataset's
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
    skip_parquet_sampling()
    return True


def skip_parquet_sampling() -> bool:
    """Ray Data's V1 Parquet reader samples the first batch of a few files in Ray tasks when a dataset is built,
    to estimate how much larger rows grow in memory, and retries a failed sample 3 times (OSError) with a
    traceback each. raysl's shards hold binary columns that do not grow when read, and a damaged shard must
    fail once and be named (raysl.data.pretraining.guarded_batches), not be retried. Without the samples Ray
    uses its defaults (an over-estimate: safe) and the read tasks themselves fail once. False if Ray's layout
    differs (nothing changed)."""
    try:
        from ray.data._internal.datasource import parquet_datasource
    except ImportError:
        return False
    original = getattr(parquet_datasource, "_fetch_file_infos", None)
    if original is None or getattr(original, "_raysl_skip", False):
        return original is not None

    def fetch_file_infos(sampled_fragments, **kwargs):
        return [None] * len(sampled_fragments)

    fetch_file_infos._raysl_skip = True
    parquet_datasource._fetch_file_infos = fetch_file_infos
    return True
