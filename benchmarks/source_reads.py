"""Why existing Parquet-of-bytes and WebDataset data are converted by `prepare` rather than read in place: the
same encoded files read by Ray Data three ways, bytes only (no decoding), rows/s delivered to this process:
raysl's prepared shards (read_parquet), the WebDataset tars (read_webdataset), and the cost of converting.

    .venv/bin/python benchmarks/source_reads.py [--images 2000]

Uses benchmarks/folder_pipeline.py's generated folder (data/bench-folder-N) and its prepared copy; writes the
WebDataset tars (1,000 samples each) next to them on first use. Each read takes the files 4 times over.
"""

from __future__ import annotations

import argparse
import io
import logging
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSES = 4  # each dataset reads its files this many times over (Ray's per-dataset start-up amortised)


def write_tars(folder: Path, out: Path, per_tar: int = 1000) -> list[str]:
    files = sorted((folder / "train").glob("*/*"))
    classes = sorted({path.parent.name for path in files})
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(files), per_tar):
        path = out / f"train-{start // per_tar:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for number, file in enumerate(files[start:start + per_tar], start):
                for suffix, data in ((file.suffix.lower().lstrip("."), file.read_bytes()),
                                     ("cls", str(classes.index(file.parent.name)).encode())):
                    info = tarfile.TarInfo(f"{number:08d}.{'jpg' if suffix == 'jpeg' else suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def rows_per_s(dataset, column: str) -> tuple[float, int]:
    started, rows = time.perf_counter(), 0
    for batch in dataset.iter_batches(batch_size=256, batch_format="numpy"):
        rows += len(batch[column])
    return rows / (time.perf_counter() - started), rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    import ray

    from raysl.ingest.dataset import split_files
    from raysl.ingest.prepare import prepare

    folder = ROOT / "data" / f"bench-folder-{args.images}"
    prepared = ROOT / "data" / f"bench-folder-{args.images}-prepared"
    if not (folder / "train").exists() or not (prepared / "manifest.json").exists():
        raise SystemExit(f"run benchmarks/folder_pipeline.py --images {args.images} first (it makes {folder})")
    tars = sorted(str(path) for path in (ROOT / "data" / f"bench-wds-{args.images}").glob("*.tar")) or write_tars(
        folder, ROOT / "data" / f"bench-wds-{args.images}")
    ray.init(num_cpus=2, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    from raysl.ray_glue.pipeline import configure_data_context

    configure_data_context()
    results = []
    for name, make, column in (
        ("prepared shards, read_parquet", lambda: ray.data.read_parquet(split_files(str(prepared), "train") * PASSES, columns=["image", "label"]), "image"),
        ("WebDataset tars, read_webdataset", lambda: ray.data.read_webdataset(tars * PASSES, decoder=None), None),
    ):
        best = 0.0
        for _ in range(3):  # the first pass pays Ray's worker start-up
            dataset = make()
            if column is None:
                column = next(key for key in dataset.schema().names if key in ("jpg", "png", "jpeg", "webp"))
            speed, rows = rows_per_s(dataset, column if name.startswith("prepared") else "__key__")
            best = max(best, speed)
        results.append((name, best, rows))
    ray.shutdown()
    started = time.perf_counter()
    prepare("webdataset", str(ROOT / "data" / f"bench-wds-{args.images}"), str(ROOT / "data" / f"bench-wds-{args.images}-prepared"),
            progress=False)
    convert = time.perf_counter() - started
    print(f"\nrows/s read by Ray Data into this process (bytes only, best of 3 passes), {args.images} images, 2 CPUs")
    for name, speed, rows in results:
        print(f"  {name:36s} {speed:9,.0f} rows/s ({rows} rows)")
    print(f"  prepare webdataset -> encoded shards   {convert:6.1f} s once ({args.images / convert:,.0f} images/s, verified)")


if __name__ == "__main__":
    main()
