"""ImageNet-1k's size end to end on one machine: a generated ImageNet-shaped tree (raysl.ingest.synthetic --imagenet:
1,000 wnid class folders, small JPEGs) at several sizes, each stage a subprocess whose wall time and peak memory per
process kind are measured:

    .venv/bin/python benchmarks/imagenet_scale.py --root /work/data-imagenet [--sizes 10000 100000 full]
        [--stages generate,listing,prepare,subset,views,monitor,smoke] [--views-images 100000]
        [--monitor-bank 100000 --monitor-queries 50000 --monitor-ranks 1 2]

Stages: `generate` (the tree, ROOT/tree-<size>; kept when already there), `listing` (raysl's plan_image_folder of
the whole tree, nothing opened), `prepare` (`raysl prepare image-folder` of it, encoded: ROOT/prepared-<size>),
`subset` (the same with `--classes imagenet100`), and on the largest size only: `views` (Ray Data streaming two
224 px RandomResizedCrop views of the prepared set's originals, --views-images of them, images/s and memory per
process kind every 10,000), `monitor` (one kNN evaluation of the image-folder sweep's small CNN, a class-balanced
bank and the first val queries, 1 and 2 gloo ranks), `smoke` (`raysl sweep sweeps/imagenet100-moco.yaml --smoke`
on the prepared ImageNet-100 subset, with tests/test_seed_sweeps.py's CPU overrides).

Memory: `peak RSS` is the kernel's maximum resident set (wait4's ru_maxrss) of the stage's main process; per kind,
every process of the stage's tree (and only of it: other users' processes are left out) sampled every 0.5 s by
benchmarks/processes.py (rss - shared, the largest process of the kind, and the kind's processes summed). `CPU s`
(the stage's processes' user + system seconds) and `load` (the machine's mean 1-minute load average meanwhile)
say how far a wall time on shared cores is from an idle machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import processes  # noqa: E402  (imports ray first: Ray's vendored psutil)
from processes import ProcessSampler, kind_of, psutil  # noqa: E402

FULL = 1_281_167
MIB = 2**20


def tree_members(root_pid: int) -> list:
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class _TreeOnly:
    """psutil as ProcessSampler sees it, but process_iter yields only one process and its descendants."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid

    def __getattr__(self, name: str):
        return getattr(psutil, name)

    def process_iter(self, attrs=None):
        for process in tree_members(self.root_pid):
            try:
                process.info = {"cmdline": process.cmdline()}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            yield process


class TreeSampler(ProcessSampler):
    """ProcessSampler over the process tree of `driver_pid` only (the machine is shared)."""

    def run(self) -> None:
        processes.psutil = _TreeOnly(self.driver_pid)
        super().run()


def snapshot(root_pid: int) -> tuple[dict[str, int], dict[str, float]]:
    """Now, per kind, summed over the kind's processes in root_pid's tree: (rss - shared) bytes, CPU seconds used."""
    memory_now: dict[str, int] = {}
    cpu_now: dict[str, float] = {}
    for process in tree_members(root_pid):
        try:
            kind = kind_of(" ".join(process.cmdline()), root_pid, process.pid) or "other"
            memory, times = process.memory_info(), process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        memory_now[kind] = memory_now.get(kind, 0) + memory.rss - memory.shared
        cpu_now[kind] = cpu_now.get(kind, 0.0) + times.user + times.system
    return memory_now, cpu_now


def run_stage(command: list[str], *, cwd: Path = REPO, env: dict | None = None) -> dict:
    """Run a command to its end: seconds, exit status, output, peak RSS (ru_maxrss, the main process), per-kind
    peaks of its tree ({kind: (largest process, kind summed, processes)} in bytes) and the machine's mean 1-minute
    load average meanwhile (the machine is shared: other users' work shows there)."""
    started, loads = time.perf_counter(), []
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        with TreeSampler(process.pid) as sampler:
            while not (waited := os.wait4(process.pid, os.WNOHANG))[0]:
                loads.append(os.getloadavg()[0])
                time.sleep(0.5)
        seconds, (_, status, usage) = time.perf_counter() - started, waited
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    kinds = {kind: (sampler.process_peak[kind], sampler.peak[kind], len(sampler.processes[kind])) for kind in sampler.peak}
    if process.returncode:
        print(f"  FAILED ({process.returncode}): {' '.join(command)}\n{output[-3000:]}", flush=True)
    return {"seconds": seconds, "rc": process.returncode, "output": output, "maxrss": usage.ru_maxrss * 1024,
            "cpu": usage.ru_utime + usage.ru_stime, "cpu_kinds": sampler.cpu_seconds(),
            "kinds": kinds, "load": sum(loads) / len(loads) if loads else os.getloadavg()[0]}


def last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def kinds_text(kinds: dict) -> str:
    """`kind largest-process-MiB (xN processes: summed MiB)`, the largest kinds first."""
    return ", ".join(f"{kind} {largest / MIB:.0f}" + (f" (x{count}: {summed / MIB:.0f})" if count > 1 else "")
                     for kind, (largest, summed, count) in sorted(kinds.items(), key=lambda item: -item[1][1]))


def dir_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


# ------------------------------------------------------------------------------------- in the child process


def child_listing(args) -> None:
    import resource

    from raysl.ingest.folder import plan_image_folder

    started, cpu = time.perf_counter(), time.process_time()
    plan = plan_image_folder(args.tree)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "files": len(plan.candidates), "classes": len(plan.class_names),
                      "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def child_views(args) -> None:
    """Stream --images source images of views from --data, as a Train worker consumes them; every --every images
    the rate since the last mark and the memory per process kind of this process tree."""
    import itertools
    import logging

    import ray
    import torch

    from raysl.config import RunConfig, load_sweep_config
    from raysl.data.pretraining import plan_pretraining
    from raysl.ray_glue.augment_actor import augment_batch
    from raysl.ray_glue.pipeline import build_view_dataset, configure_data_context, shuffle_buffer

    torch.set_num_threads(1)
    views = load_sweep_config(REPO / "sweeps" / "imagenet100-moco.yaml").base.views.model_dump(mode="json")
    views["crops"][0]["size"] = args.size
    run = RunConfig.model_validate({"data": {"path": args.data}, "batch_size": args.batch, "views": views,
                                    "resources": {"data_actors": args.actors, "data_cpus": 1}})
    for attempt in range(3):  # Ray waits 30 s for its raylet: on loaded shared cores that can be too short
        try:
            ray.init(num_cpus=args.actors + 1, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    configure_data_context(run)
    plan = plan_pretraining(run, args.data)
    dataset = build_view_dataset(run, plan, epochs=1)
    batches = dataset.iter_torch_batches(batch_size=args.batch, drop_last=True, prefetch_batches=2,
                                         local_shuffle_buffer_size=shuffle_buffer(args.batch, augment_batch(run.views, plan)))
    marks, delivered, mark = [], 0, args.every
    started = time.perf_counter()

    def add_mark() -> None:
        now = time.perf_counter()
        previous = marks[-1] if marks else {"images": 0, "seconds": 0.0}
        memory, cpu = snapshot(os.getpid())
        marks.append({"images": delivered, "seconds": now - started, "load": os.getloadavg()[0],
                      "window_per_s": (delivered - previous["images"]) / (now - started - previous["seconds"]),
                      "kinds": memory, "cpu": cpu})

    with TreeSampler(os.getpid()) as sampler:
        for batch in itertools.islice(batches, -(-args.images // args.batch)):
            delivered += len(batch["view_0"])
            if delivered >= mark:
                add_mark()
                mark += args.every
        if not marks or marks[-1]["images"] != delivered:  # the last, short of a mark (or the dataset ran out)
            add_mark()
    ray.shutdown()
    peaks = {kind: (sampler.process_peak[kind], sampler.peak[kind], len(sampler.processes[kind])) for kind in sampler.peak}
    print(json.dumps({"marks": marks, "peaks": peaks, "epoch_images": plan.epoch_images, "size": args.size,
                      "actors": args.actors}))


def child_monitor(args) -> None:
    """One kNN monitor run per benchmarks/monitor.py's measure: its load and evaluation seconds and each rank's peak."""

    import torch.multiprocessing as mp
    from monitor import _rank  # benchmarks/monitor.py: one rank's measure(), gloo when world > 1

    from raysl.config import load_sweep_config

    config = load_sweep_config(REPO / "sweeps" / "image-folder.yaml").base.model_dump(mode="json")
    config["data"]["path"] = args.data
    config["evaluation"].update(bank_limit=args.bank, query_limit=args.queries, image_size=args.size)
    if args.ranks == 1:
        results = {}
        _rank(0, 1, "", config, args.data, args.evaluations, results)
    else:
        with mp.Manager() as manager, tempfile.TemporaryDirectory() as directory:
            shared = manager.dict()
            mp.spawn(_rank, args=(args.ranks, f"{directory}/init", config, args.data, args.evaluations, shared),
                     nprocs=args.ranks)
            results = dict(shared)
    print(json.dumps({"ranks": [results[rank] for rank in sorted(results)]}))


# ------------------------------------------------------------------------------------------------ stages


def table(title: str, header: str) -> None:
    print(f"\n== {title}\n{header}", flush=True)


def stage_generate(root: Path, sizes: list[int]) -> None:
    table("trees (raysl.ingest.synthetic --imagenet; render: the pool of distinct JPEGs; write: the files)",
          f"{'train':>10s} {'val':>7s} {'classes':>7s} {'in100 train':>11s} {'GiB':>6s} {'render s':>8s} {'write s':>7s} "
          f"{'files/s':>8s} {'CPU s':>6s} {'peak RSS':>8s} {'load':>5s}")
    for size in sizes:
        tree = tree_path(root, size)
        command = [sys.executable, "-m", "raysl.ingest.synthetic", str(tree), "--imagenet"]
        command += ["--train-images", str(size)] if size != FULL else []
        run = None if (tree / ".imagenet-synthetic.json").exists() else run_stage(command)
        made = json.loads((tree / ".imagenet-synthetic.json").read_text())
        files = made["train"] + made["val"]
        measured = f"{run['cpu']:6.0f} {run['maxrss'] / MIB:8.0f} {run['load']:5.1f}" if run else "   (made before: kept)"
        print(f"{made['train']:10,d} {made['val']:7,d} {made['classes']:7d} {made['imagenet100_train']:11,d} "
              f"{made['bytes'] / 2**30:6.2f} {made['render_s']:8.1f} {made['write_s']:7.1f} "
              f"{files / made['write_s']:8,.0f} {measured}", flush=True)


def stage_listing(me: list[str], root: Path, sizes: list[int]) -> None:
    table("listing (plan_image_folder: paths only; the second of two listings, the entries in the page cache)",
          f"{'train':>10s} {'files':>10s} {'seconds':>8s} {'files/s':>9s} {'CPU s':>6s} {'peak RSS':>8s} {'load':>5s}")
    for size in sizes:
        command = [*me, "--one", "listing", "--tree", str(tree_path(root, size))]
        run_stage(command)
        result = run_stage(command)
        row = last_json(result["output"])
        print(f"{size:10,d} {row['files']:10,d} {row['seconds']:8.1f} {row['files'] / row['seconds']:9,.0f} "
              f"{row['cpu']:6.1f} {result['maxrss'] / MIB:8.0f} {result['load']:5.1f}", flush=True)


def stage_prepare(root: Path, sizes: list[int], classes: str | None) -> None:
    what = f" --classes {classes}" if classes else " (encoded; one process, its threads: no worker processes)"
    table(f"raysl prepare image-folder{what}",
          f"{'train':>10s} {'files':>10s} {'test':>7s} {'cls':>5s} {'wall s':>7s} {'files/s':>8s} {'CPU s':>6s} "
          f"{'files/CPU s':>11s} {'shards':>6s} {'manif KiB':>9s} {'GiB':>6s} {'peak RSS':>8s} {'rss-shr':>7s} {'load':>5s}")
    for size in sizes:
        out = prepared_path(root, size, classes)
        command = [sys.executable, "-m", "raysl", "prepare", "image-folder", str(tree_path(root, size)), "--out", str(out),
                   "--no-progress"]
        result = run_stage(command + (["--classes", classes] if classes else []))
        if result["rc"]:
            continue
        manifest = json.loads((out / "manifest.json").read_text())
        kept, splits = manifest["kept"], manifest["splits"]
        others = {kind: value for kind, value in result["kinds"].items() if kind != "driver"}
        print(f"{size:10,d} {kept:10,d} {splits['test']['count']:7,d} {len(manifest['class_names']):5d} "
              f"{result['seconds']:7.1f} {kept / result['seconds']:8,.0f} {result['cpu']:6.0f} {kept / result['cpu']:11,.0f} "
              f"{len(manifest['files']):6d} {(out / 'manifest.json').stat().st_size / 1024:9.0f} "
              f"{dir_bytes(out) / 2**30:6.2f} {result['maxrss'] / MIB:8.0f} {result['kinds']['driver'][0] / MIB:7.0f} "
              f"{result['load']:5.1f}" + (f"  other processes: {kinds_text(others)}" if others else ""), flush=True)


def stage_views(me: list[str], data: Path, args) -> None:
    result = run_stage([*me, "--one", "views", "--data", str(data), "--images", str(args.views_images),
                        "--size", str(args.views_size), "--actors", str(args.views_actors)])
    if result["rc"]:
        return
    row = last_json(result["output"])
    kinds = [kind for kind in ("driver", "augmentation actors", "read tasks", "other Ray actors", "idle Ray workers",
                               "raylets", "GCS", "dashboard") if any(kind in mark["kinds"] for mark in row["marks"])]
    table(f"views: Ray Data streaming 2 views of {row['size']} px (RandomResizedCrop of the original, the MoCo v2 recipe) "
          f"from the {row['epoch_images']:,d}-image prepared set, {row['actors']} augmentation actors of 1 CPU, batches of "
          f"128; per 10,000 images: images/s, the actors' CPU, memory per kind now (rss - shared, summed, MiB)",
          f"{'images':>8s} {'s':>6s} {'img/s':>6s} {'window':>6s} {'actor CPUs':>10s} {'img/actor-CPU-s':>15s} {'load':>5s} "
          + " ".join(f"{kind[:12]:>12s}" for kind in kinds))
    previous = {"images": 0, "seconds": 0.0, "cpu": {}}
    for mark in row["marks"]:
        cpu = mark["cpu"].get("augmentation actors", 0.0) - previous["cpu"].get("augmentation actors", 0.0)
        images, seconds = mark["images"] - previous["images"], mark["seconds"] - previous["seconds"]
        print(f"{mark['images']:8,d} {mark['seconds']:6.0f} {mark['images'] / mark['seconds']:6.0f} "
              f"{mark['window_per_s']:6.0f} {cpu / seconds:10.2f} {images / max(cpu, 1e-9):15.0f} {mark['load']:5.1f} "
              + " ".join(f"{mark['kinds'].get(kind, 0) / MIB:12.0f}" for kind in kinds))
        previous = mark
    print(f"peaks per kind (largest process (xN processes: summed), MiB): "
          f"{kinds_text({kind: tuple(value) for kind, value in row['peaks'].items()})}", flush=True)


def stage_monitor(me: list[str], data: Path, args) -> None:
    table(f"kNN monitor (image-folder sweep's small CNN, 64 px evaluation images; bank {args.monitor_bank:,d} "
          f"class-balanced, the first {args.monitor_queries:,d} queries) on {data.name}; one process per rank",
          f"{'ranks':>5s} {'load s':>7s} {'evaluation s':>14s} {'CPU s':>6s} {'peak RSS per rank MiB':>22s} "
          f"{'growth MiB':>10s} {'kNN top-1':>9s} {'load':>5s}")
    for ranks in args.monitor_ranks:
        result = run_stage([*me, "--one", "monitor", "--data", str(data), "--bank", str(args.monitor_bank),
                            "--queries", str(args.monitor_queries), "--ranks", str(ranks),
                            "--evaluations", str(args.monitor_evaluations)])
        if result["rc"]:
            continue
        rows = last_json(result["output"])["ranks"]
        evals = ", ".join(f"{max(row['eval_s'][i] for row in rows):.1f}" for i in range(args.monitor_evaluations))
        peaks = " / ".join(f"{row['peak_mib']:.0f}" for row in rows)
        print(f"{ranks:5d} {max(row['load_s'] for row in rows):7.1f} {evals:>14s} {result['cpu']:6.0f} {peaks:>22s} "
              f"{max(row['peak_mib'] - row['baseline_mib'] for row in rows):10.0f} {rows[0]['knn_top1']:9.4f} "
              f"{result['load']:5.1f}", flush=True)


def stage_smoke(root: Path, data: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from test_seed_sweeps import ON_CPU  # the CPU overrides its --smoke test runs the seed sweeps with

    command = [sys.executable, "-m", "raysl", "sweep", str(REPO / "sweeps" / "imagenet100-moco.yaml"), "--smoke"]
    for override in [*ON_CPU, f"base.data.path={data}", f"storage_path={root / 'smoke-results'}"]:
        command += ["--set", override]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # an embedded Ray of its own
    result = run_stage(command, cwd=root, env=env)
    table(f"raysl sweep sweeps/imagenet100-moco.yaml --smoke on {data.name} (embedded Ray; --set {' '.join(ON_CPU)})",
          f"wall {result['seconds']:.0f} s, exit {result['rc']}, load {result['load']:.1f}; peak RSS of `raysl sweep` "
          f"{result['maxrss'] / MIB:.0f} MiB\nper kind, MiB: {kinds_text(result['kinds'])}\nCPU s per kind: "
          + ", ".join(f"{kind} {seconds:.0f}" for kind, seconds in sorted(result["cpu_kinds"].items(), key=lambda kv: -kv[1])))
    lines = result["output"].strip().splitlines()
    board = Path(lines[-1]) / "leaderboard.md" if lines else None
    print(board.read_text() if result["rc"] == 0 and board and board.exists() else "\n".join(lines[-15:]), flush=True)


def tree_path(root: Path, size: int) -> Path:
    return root / f"tree-{'full' if size == FULL else size}"


def prepared_path(root: Path, size: int, classes: str | None = None) -> Path:
    return root / f"prepared-{'full' if size == FULL else size}{'-' + classes if classes else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/work/data-imagenet", help="trees and prepared sets (outside the repo)")
    parser.add_argument("--sizes", nargs="+", default=["10000", "100000", "full"], help="train images, or full")
    parser.add_argument("--stages", default="generate,listing,prepare,subset,views,monitor,smoke")
    parser.add_argument("--views-images", type=int, default=100_000)
    parser.add_argument("--views-size", type=int, default=224)
    parser.add_argument("--views-actors", type=int, default=2)
    parser.add_argument("--monitor-bank", type=int, default=100_000)
    parser.add_argument("--monitor-queries", type=int, default=50_000)
    parser.add_argument("--monitor-ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--monitor-evaluations", type=int, default=1)
    for hidden, kind, default in (("--one", str, None), ("--tree", str, None), ("--data", str, None),
                                  ("--images", int, None), ("--every", int, 10_000), ("--size", int, 64),
                                  ("--actors", int, 2), ("--batch", int, 128), ("--bank", int, None),
                                  ("--queries", int, None), ("--ranks", int, 1), ("--evaluations", int, 1)):
        parser.add_argument(hidden, type=kind, default=default, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return {"listing": child_listing, "views": child_views, "monitor": child_monitor}[args.one](args)
    root, stages = Path(args.root), args.stages.split(",")
    sizes = sorted(FULL if size == "full" else int(size) for size in args.sizes)
    me = [sys.executable, __file__]
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, shared; load average at the "
          f"start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; {time.strftime('%Y-%m-%d %H:%M')}; `load` columns: the "
          "mean 1-minute load average during the stage (2.0 = both cores busy)", flush=True)
    if "generate" in stages:
        stage_generate(root, sizes)
    if "listing" in stages:
        stage_listing(me, root, sizes)
    for stage, classes in (("prepare", None), ("subset", "imagenet100")):
        if stage in stages:
            stage_prepare(root, sizes, classes)
    if "views" in stages:
        stage_views(me, prepared_path(root, sizes[-1]), args)
    if "monitor" in stages:
        stage_monitor(me, prepared_path(root, sizes[-1]), args)
    if "smoke" in stages:
        stage_smoke(root, prepared_path(root, sizes[-1], "imagenet100"))


if __name__ == "__main__":
    main()
