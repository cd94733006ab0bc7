"""How long `prepare` takes to list a million-file image folder (paths only: nothing is opened), ImageNet's
shape: 1,000 class folders under train/ plus 50 files each under val/. The files are empty (listing never
reads them), made under data/ on first use:

    .venv/bin/python benchmarks/listing.py [--files 1000000] [--classes 1000]

Prints the seconds to list with raysl's parallel listing (raysl.ingest.folder.plan_image_folder, one thread per
class folder) against one os.walk over the same tree, both after a warm-up listing (the directory entries in
the page cache, as on a second run; a cold first listing on a network filesystem is slower for both).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_tree(root: Path, files: int, classes: int) -> None:
    per_class = files // classes
    for split, count in (("train", per_class), ("val", 50)):
        for number in range(classes):
            folder = root / split / f"n{number:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                open(folder / f"n{number:08d}_{index}.JPEG", "wb").close()
    (root / ".complete").touch()


def walk(root: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(root))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()
    from raysl.ingest.folder import plan_image_folder

    root = ROOT / "data" / f"listing-{args.files}"
    if not (root / ".complete").exists():
        started = time.perf_counter()
        make_tree(root, args.files, args.classes)
        print(f"made {args.files + 50 * args.classes:,} empty files in {time.perf_counter() - started:.0f} s")
    walk(root)  # warm the page cache for both
    started = time.perf_counter()
    plan = plan_image_folder(str(root))
    ours = time.perf_counter() - started
    listed = len(plan.candidates)
    started = time.perf_counter()
    walked = walk(root)
    plain = time.perf_counter() - started
    print(f"\nlisting {walked:,} files in {args.classes} class folders x 2 splits, {os.cpu_count()} cores")
    print(f"  raysl plan_image_folder (parallel scandir, split/class rules): {ours:6.1f} s  ({walked / ours:,.0f} files/s)")
    print(f"  os.walk (one thread, no rules):                               {plain:6.1f} s  ({walked / plain:,.0f} files/s)")
    print(f"  planned {listed:,} image files as {len(plan.class_names)} classes")


if __name__ == "__main__":
    main()
