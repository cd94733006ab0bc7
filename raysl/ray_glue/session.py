"""Ray for one command or API call: started here when needed, shut down after only if started here."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from raysl.errors import UserError


class _TokenAuthOnByDefault(logging.Filter):
    """Drops Ray's notice that token authentication is on by default for a local cluster Ray starts: it is on
    (good), and nothing about it asks anything of the user. Ray's warning that it is *off* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


# Raylet messages the driver prints that ask nothing the user can do: on a small machine raysl's trials,
# augmentation actors and read tasks (fractional CPUs by design) start more worker processes at once than the
# raylet's "maximum expected startup concurrency" (the CPU count), and it says so at the sweep's end.
_RAYLET_NOISE = ("worker processes have been started on node",)


def _quiet_raylet_noise(worker_module) -> object:
    """Wraps ray._private.worker.print_to_stdstream (which the driver's error listener looks up on each message)
    to drop the _RAYLET_NOISE lines; returns the original, for putting back."""
    original = worker_module.print_to_stdstream

    def print_to_stdstream(data, ignore_prefix: bool):
        if data.get("pid") == "raylet":
            lines = [line for line in data.get("lines", []) if not any(text in line for text in _RAYLET_NOISE)]
            if not lines:
                return None
            data = {**data, "lines": lines}
        return original(data, ignore_prefix=ignore_prefix)

    worker_module.print_to_stdstream = print_to_stdstream
    return original


PIN_ADDRESS = "raysl.ray_glue.session.pin_cluster_address"


def pin_cluster_address() -> None:
    """Every worker process of an embedded Ray knows its own cluster's address (RAY_ADDRESS).

    Ray Train's PlacementGroupCleaner (it frees a trial's placement group when ASHA stops the trial) asks the State
    API, which finds "the" local cluster by looking for GCS processes on the machine: with a second Ray on the same
    machine (another sweep, a test cluster) it raised "Found multiple active Ray instances", and the stopped trial's
    placement group was never freed. Run in each worker at start-up (runtime_env's worker_process_setup_hook)."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


@contextmanager
def ray_session(*, quiet: bool = False, log=print):
    """RAY_ADDRESS's cluster (also set under `ray job submit`), else an embedded local Ray with the dashboard on
    (it runs the cleaner that frees a stopped trial's placement group). A Ray that is already initialised (a
    notebook's) is used and left running; one started here is shut down, so its late log lines come first.
    `quiet`: the workers' output is not forwarded to this process (Tune's table is the sweep's view)."""
    import ray
    import ray._private.worker as worker_module

    started = not ray.is_initialized()
    original = _quiet_raylet_noise(worker_module) if started else None
    try:
        if started:
            options = dict(logging_level=logging.WARNING, log_to_driver=not quiet)
            if os.environ.get("RAY_ADDRESS"):
                log(f"connecting to the Ray cluster at {os.environ['RAY_ADDRESS']}")
                ray.init(**options)
            else:
                log("starting an embedded local Ray (set RAY_ADDRESS to use a cluster)")
                notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
                quiet_notice = _TokenAuthOnByDefault()
                notice.addFilter(quiet_notice)
                try:
                    ray.init(include_dashboard=True, runtime_env={"worker_process_setup_hook": PIN_ADDRESS}, **options)
                except Exception as error:  # e.g. "The current node timed out during startup" on overloaded cores
                    lines = [line for line in str(error).strip().splitlines() if line.strip()]
                    raise UserError(f"Ray did not start here: {lines[-1] if lines else type(error).__name__} "
                                    "(its logs: the session_latest/logs folder of Ray's temp dir, /tmp/ray by default)") from None
                finally:
                    notice.removeFilter(quiet_notice)
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
        if original is not None:
            worker_module.print_to_stdstream = original


def cluster_nodes():
    """The connected Ray cluster's live nodes, as they are now (packing.NodeShape each)."""
    import ray

    from raysl.ray_glue.packing import NodeShape

    return [NodeShape(node["NodeManagerAddress"], float(node["Resources"].get("CPU", 0)), float(node["Resources"].get("GPU", 0)))
            for node in ray.nodes() if node.get("Alive")]
