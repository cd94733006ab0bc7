"""Ray Train's failure policy, told which failures no retry can fix.

Ray Train restarts the worker group after any worker error, up to `max_failures` times (FailureConfig). A retry
helps a killed worker or a lost node; it cannot help a damaged shard (the same bytes are read again), a non-finite
loss (the same run diverges again), a checkpoint no copy of which loads, or a config error found in a worker: each
restart only adds a worker group's start-up and another traceback. Ray 2.60 takes no failure policy from the user
(the trainer builds `DefaultFailurePolicy` in `fit()`, on the driver, and hands it to the controller actor), so
`install()` wraps the factory `fit()` calls: the policy it returns raises at once when any worker failed with one
of FINAL_ERRORS, and otherwise decides as Ray's default does.

failure_summary / describe_failure: a failed run's cause in one line (raysl's own message, or what an
out-of-memory kill asks the user to change), not Ray's frames.

Imports raysl.errors, raysl.training.loop and raysl.ingest.shards (the error types).
"""

from __future__ import annotations


from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision

from raysl.errors import UserError, out_of_memory
from raysl.ingest.shards import DamagedShardError
from raysl.training.loop import CheckpointError, NonFiniteLossError

FINAL_ERRORS: tuple[type[BaseException], ...] = (UserError, DamagedShardError, NonFiniteLossError, CheckpointError)


def final_failure(failure: BaseException) -> bool:
    """Whether a worker's failure is one no retry can fix (Ray wraps a worker's exception with its traceback)."""
    return isinstance(getattr(failure, "_base_exc", failure), FINAL_ERRORS)


class RetryOnlyWhatARetryCanFix(DefaultFailurePolicy):
    """DefaultFailurePolicy, but a worker group failure in which any worker raised one of FINAL_ERRORS is raised."""

    def make_decision(self, training_failed_error) -> FailureDecision:
        failures = getattr(training_failed_error, "worker_failures", None) or {}
        if any(final_failure(failure) for failure in failures.values()):
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


def install() -> bool:
    """Make TorchTrainer.fit() (in this process) use RetryOnlyWhatARetryCanFix; idempotent. False if Ray's layout
    differs (nothing changed: Ray's default policy retries as before)."""
    try:
        from ray.train.v2.api import data_parallel_trainer
    except ImportError:
        return False
    factory = getattr(data_parallel_trainer, "create_failure_policy", None)
    if factory is None:
        return False
    if getattr(factory, "_raysl", False):
        return True

    def create_failure_policy(failure_config):
        return RetryOnlyWhatARetryCanFix(failure_config)

    create_failure_policy._raysl = True
    data_parallel_trainer.create_failure_policy = create_failure_policy
    return True


def describe_failure(failure: BaseException) -> str:
    """One line for one worker's failure: raysl's own message for raysl's errors (it names the file, field or
    shard and what to do); for a worker the memory monitor killed, that and what to change; else the last line
    of what Ray reports (the exception, not its frames)."""
    base = getattr(failure, "_base_exc", failure)
    if isinstance(base, FINAL_ERRORS):
        return " ".join(line.strip() for line in str(base).strip().splitlines() if line.strip()) or type(base).__name__
    text = str(failure)
    if advice := out_of_memory(text):
        return advice
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(base).__name__


def failure_summary(error: BaseException) -> str:
    """The user-facing cause of a failed Train run, one line: each failed rank's cause (only the ranks that failed
    with raysl's own errors when any did: the others' errors are collateral, e.g. a collective torn down)."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:
        return describe_failure(getattr(error, "controller_failure", None) or error)
    final = {rank: failure for rank, failure in failures.items() if final_failure(failure)}
    lines = [f"rank {rank}: {describe_failure(failure)}" for rank, failure in sorted((final or failures).items())]
    return "; ".join(dict.fromkeys(lines))
