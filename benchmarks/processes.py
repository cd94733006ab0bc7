"""Who used the machine during a benchmark: CPU seconds and peak memory per kind of process (Train workers,
augmentation actors, Ray's own processes, ...), sampled from /proc by psutil in a background thread.
Shared by benchmarks/scaling.py and benchmarks/sweep_overhead.py."""

from __future__ import annotations

import threading
from collections import defaultdict

import ray  # noqa: F401  (first: Ray puts its vendored psutil on the path)
import psutil

KINDS = {  # command line fragment (Ray sets process titles) -> the kind reported; first match wins
    "RayTrainWorker": "Train workers", "MapWorker": "augmentation actors", "ReadParquet": "read tasks",
    "TrainController": "Train controllers", "SplitCoordinator": "split coordinators", "raysl_trial": "Tune trial drivers",
    "ray::IDLE": "idle Ray workers", "raylet": "raylets", "gcs_server": "GCS", "dashboard": "dashboard",
    "ray::": "other Ray actors", "multiprocessing": "plain processes",
}


def kind_of(command: str, driver_pid: int, pid: int) -> str | None:
    if pid == driver_pid:
        return "driver"
    return next((kind for fragment, kind in KINDS.items() if fragment in command), None)


class ProcessSampler(threading.Thread):
    """Per kind: CPU seconds used while sampling (summed over processes, including ones that ended between
    samples up to their last sample) and the peak of the summed (rss - shared) memory."""

    def __init__(self, driver_pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.driver_pid, self.interval, self.stop = driver_pid, interval, threading.Event()
        self.peak: dict[str, int] = defaultdict(int)
        self.process_peak: dict[str, int] = defaultdict(int)  # the largest single process of each kind
        self.processes: dict[str, set[int]] = defaultdict(set)
        self.first_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, tuple[str, float]] = {}

    def run(self) -> None:
        while True:
            now: dict[str, int] = defaultdict(int)
            for process in psutil.process_iter(["cmdline"]):
                try:
                    kind = kind_of(" ".join(process.info["cmdline"] or []), self.driver_pid, process.pid)
                    if kind is None:
                        continue
                    memory, times = process.memory_info(), process.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                now[kind] += memory.rss - memory.shared
                self.process_peak[kind] = max(self.process_peak[kind], memory.rss - memory.shared)
                self.processes[kind].add(process.pid)
                used = times.user + times.system
                self.first_cpu.setdefault(process.pid, used)
                self.last_cpu[process.pid] = (kind, used)
            for kind, used in now.items():
                self.peak[kind] = max(self.peak[kind], used)
            if self.stop.wait(self.interval):
                return

    def finish(self) -> None:
        self.stop.set()
        self.join()

    def __enter__(self) -> ProcessSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    def cpu_seconds(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for pid, (kind, used) in self.last_cpu.items():
            totals[kind] += used - self.first_cpu[pid]
        return dict(totals)
