"""Ray for one command or API call: started here when needed, shut down after only if started here."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager


@contextmanager
def ray_session(*, quiet: bool = False, log=print):
    """RAY_ADDRESS's cluster (also set under `ray job submit`), else an embedded local Ray with the dashboard on
    (it runs the cleaner that frees a stopped trial's placement group). A Ray that is already initialised (a
    notebook's) is used and left running; one started here is shut down, so its late log lines come first.
    `quiet`: the workers' output is not forwarded to this process (Tune's table is the sweep's view)."""
    import ray

    started = not ray.is_initialized()
    if started:
        options = dict(logging_level=logging.WARNING, log_to_driver=not quiet)
        if os.environ.get("RAY_ADDRESS"):
            log(f"connecting to the Ray cluster at {os.environ['RAY_ADDRESS']}")
            ray.init(**options)
        else:
            log("starting an embedded local Ray (set RAY_ADDRESS to use a cluster)")
            ray.init(include_dashboard=True, **options)
    try:
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
