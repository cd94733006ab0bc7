"""The screen and the run's log while Ray runs: raysl's own lines on the screen, everything else in a log file.

Ray prints a great deal a user need not read: its workers' forwarded output (Train's "Checkpoint successfully
created", "Reporting training result ...", Ray Data's "Progress bars disabled" and deprecation warnings, C++
`core_worker.cc` lines), its own Python logging and warnings, and every traceback of a failure it retries. While a
`RunLog` is open, file descriptors 1 and 2 point at the log file, so all of that lands there, in order; raysl's
lines reach the screen through `say`, and `sys.stdout` is the screen (the sweep's live view prints to it). A worker
line that starts with one of `screen_prefixes` (a run's `[name] epoch ...` lines) is shown once on the screen,
without Ray's `(RayTrainWorker pid=...)` prefix (Ray Train forwards a worker's print twice); every forwarded line is also kept in the log. On exit, the
descriptors and sys.stdout are put back, so the error that ends a command prints on the screen, naming the log; an
exception other than raysl's UserError (Ray failing to start, an error inside Ray) leaves its trace in the log and
becomes one UserError naming it.

Imports raysl.errors and Ray (ray._private.worker.print_to_stdstream, which the driver looks up for each forwarded batch).
"""

from __future__ import annotations

import io
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from raysl.errors import UserError, out_of_memory

LOG_NAME = "raysl.log"
DUPLICATE_WINDOW_S = 60.0


def local_log_path(run_dir: str, name: str) -> str:
    """Where a run's log goes: in its run directory when that is local, else in a local folder (object storage
    cannot be appended to line by line)."""
    if "://" not in run_dir:
        os.makedirs(run_dir, exist_ok=True)
        return os.path.join(run_dir, LOG_NAME)
    folder = os.path.join(os.path.expanduser("~"), ".cache", "raysl", "logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log")


class RunLog:
    """An open run log: `say(text)` prints to the screen; `path` is the log file."""

    def __init__(self, path: str, screen: io.TextIOBase):
        self.path, self.screen = path, screen

    def say(self, text: str) -> None:
        self.screen.write(text + "\n")
        self.screen.flush()


def _uses_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextmanager
def run_log(path: str, screen_prefixes: Sequence[str] = ()) -> Iterator[RunLog]:
    """Send file descriptors 1 and 2 (Ray's output, logging, warnings, tracebacks) to `path` until the block ends;
    yield the RunLog whose `say` writes to the screen. Worker lines starting with a screen prefix are also shown."""
    import ray._private.worker as worker_module

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    log_file = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(sys.argv)}\n")
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    stdout = sys.stdout
    # The screen: the terminal (or pipe) fd 1 was, when sys.stdout writes there; else sys.stdout itself (a notebook's)
    screen = open(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace") if _uses_fd(stdout, 1) else stdout
    forward = worker_module.print_to_stdstream
    log = RunLog(path, screen)

    shown: dict[str, float] = {}  # screen line -> when it was shown

    def print_to_stdstream(data, ignore_prefix: bool):
        origin = data.get("actor_name") or data.get("task_name") or ""
        for line in data.get("lines", []):
            log_file.write(f"({origin} pid={data.get('pid')}) {line}\n")
            if any(line.startswith(prefix) for prefix in screen_prefixes):
                # A Train worker's print reaches the driver twice (its stdout and Train's copy of it): shown once
                now = time.monotonic()
                if now - shown.get(line, -DUPLICATE_WINDOW_S) >= DUPLICATE_WINDOW_S:
                    log.say(line)
                shown[line] = now

    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    if screen is not stdout:
        sys.stdout = screen
    worker_module.print_to_stdstream = print_to_stdstream
    try:
        yield log
    except UserError:
        raise
    except Exception as error:  # anything else Ray raised here: its trace in the log, one line on the screen
        log_file.write(traceback.format_exc())
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        cause = out_of_memory(str(error)) or f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
        raise UserError(f"Ray failed: {cause}\n(the trace and Ray's output: {path})") from None
    finally:
        worker_module.print_to_stdstream = forward
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout = stdout
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        if screen is not stdout:
            screen.close()
        log_file.close()
