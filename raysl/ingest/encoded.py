"""The encoded (variable-size) storage of `raysl prepare`: images kept as their encoded file bytes.

Shard columns: `image` (binary: a JPEG, PNG or WebP file, mode RGB or L, upright), `width` and `height`
(int32: of the image as stored, after EXIF orientation and any resize), `label` (int64, -1 unlabeled),
`index` (int64, row number within the split). Decode a row with PIL (`Image.open(io.BytesIO(row["image"]))`)
or torchvision.io.decode_image; decode L images to RGB (R=G=B) when the manifest's `channels` is 3.

Which files are kept byte-for-byte: JPEG (and MPO, a multi-picture JPEG), PNG and WebP files in mode RGB or
L that need no EXIF rotation (orientation tag absent or 1) and whose long side is at most `max_side`. Every
other decodable file is decoded, turned upright (PIL ImageOps.exif_transpose), converted to L or RGB as the
fixed-shape path does (CMYK, 16-bit, palettes, alpha dropped, see `raysl.ingest.source.to_uint8`), resized
so that its long side is `max_side` when larger (aspect kept, antialiased Lanczos), and re-encoded: JPEG at
`quality` for lossy sources (JPEG, WebP), PNG for lossless ones (PNG, BMP, TIFF, GIF, PPM, ...).

Memory stays bounded whatever the dataset size: items stream through a thread pool (PIL releases the GIL)
with a bounded window of items in flight, and each split's rows go to a `ShardWriter` that writes one row
group at a time and closes a shard at `shard_rows` rows or `shard_bytes` image bytes. What grows with the
dataset is per file, not per pixel: the planned list of files (paths) and each kept image's width and height
(Python ints, for the size summary).
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from raysl.ingest.shards import describe_file
from raysl.ingest.source import to_uint8
from raysl.io.storage import read_path

DEFAULT_MAX_SIDE = 512  # ImageNet's photos are mostly <= 500 px: kept byte-for-byte; larger ones are shrunk
DEFAULT_QUALITY = 90
SHARD_ROWS = 10_000
SHARD_BYTES = 64 * 2**20  # image bytes per shard: a read task holds about one shard (benchmarks/folder_memory.py)
ROW_GROUP_ROWS = 256
AUTO_SAMPLE = 256  # auto mode reads the headers of this many images
AUTO_PIXELS_MAX_SIDE = 64
KEEP_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP"})
ORIENTATION_TAG = 0x0112

SCHEMA = pa.schema([
    ("image", pa.binary()), ("width", pa.int32()), ("height", pa.int32()), ("label", pa.int64()),
    ("index", pa.int64()),
])


@dataclass
class Item:
    """One image to store: its split ("train"/"test"), label (-1: none), the name a skip is reported under,
    and either its bytes (`data`, from a Parquet or tar source) or a `path` to read them from."""

    split: str
    label: int
    key: str
    path: str | None = None
    data: bytes | None = None


@dataclass
class Encoded:
    """An image ready to store: its file bytes, size as stored, whether it is grayscale (mode L), its
    PIL histogram (256 values per band) and whether it was re-encoded."""

    data: bytes
    width: int
    height: int
    gray: bool
    histogram: list[int]
    converted: bool


def encode_image(data: bytes, *, max_side: int | None, quality: int) -> Encoded | str:
    """Verify one encoded image (decoding it fully) and keep or re-encode it (see the module docstring);
    returns why it cannot be used instead when it does not decode."""
    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.load()
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            width, height = image.size
            if (image_format in KEEP_FORMATS and image.mode in ("RGB", "L") and orientation not in range(2, 9)
                    and (not max_side or max(width, height) <= max_side) and getattr(image, "n_frames", 1) == 1):
                return Encoded(data, width, height, image.mode == "L", image.histogram(), False)
            pixels = to_uint8(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        return "UnidentifiedImageError: not a recognised image format"
    except Exception as error:  # PIL reports bad data as OSError, SyntaxError, ValueError, struct.error, ...
        return f"{type(error).__name__}: {error}"
    upright = Image.fromarray(pixels)
    if max_side and max(upright.size) > max_side:
        scale = max_side / max(upright.size)
        size = (max(1, round(upright.width * scale)), max(1, round(upright.height * scale)))
        upright = upright.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if image_format in LOSSY_FORMATS:
        upright.save(buffer, format="JPEG", quality=quality)
    else:
        upright.save(buffer, format="PNG")
    return Encoded(buffer.getvalue(), upright.width, upright.height, upright.mode == "L", upright.histogram(), True)


def header_size(filesystem: pafs.FileSystem, path: str) -> tuple[int, int] | None:
    """(width, height) from an image file's header (nothing is decoded), or None when PIL cannot open it."""
    try:
        with filesystem.open_input_file(path) as stream, Image.open(stream) as image:
            return image.size
    except Exception:  # noqa: BLE001 - any unreadable file is simply not part of the sample
        return None


def choose_folder_mode(filesystem: pafs.FileSystem, paths: list[str], seed: int, workers: int | None) -> tuple[str, str]:
    """Auto mode for an image folder: (mode, why). Reads the headers of AUTO_SAMPLE files in a seeded
    order: "pixels" if every readable one has the same size and its long side is <= 64 (MNIST/CIFAR-like
    small fixed-size images; also when none is readable), else "encoded"."""
    order = np.random.default_rng(seed).permutation(len(paths))[:AUTO_SAMPLE]
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(order)))) as executor:
        sizes = {size for size in executor.map(lambda row: header_size(filesystem, paths[row]), order.tolist()) if size}
    if len(sizes) > 1:
        return "encoded", f"auto: sampled images have {len(sizes)} sizes"
    if sizes and max(next(iter(sizes))) > AUTO_PIXELS_MAX_SIDE:
        width, height = next(iter(sizes))
        return "encoded", f"auto: sampled images are {width}x{height}, larger than {AUTO_PIXELS_MAX_SIDE} px"
    if sizes:
        width, height = next(iter(sizes))
        return "pixels", f"auto: sampled images are all {width}x{height} (<= {AUTO_PIXELS_MAX_SIDE} px)"
    return "pixels", "auto: no readable image in the sample"


# ---------------------------------------------------------------------------------------------- writing


class ShardWriter:
    """Writes one split's rows as `<split>/part-NNNNN.parquet`, a row group at a time; a shard is closed at
    `shard_rows` rows or `shard_bytes` image bytes (the row that crosses it is the shard's last), and its
    `files` entry (describe_file) recorded. A split with no rows gets one empty shard."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, split: str, *, shard_rows: int, shard_bytes: int,
                 row_group_rows: int):
        self.filesystem, self.root, self.split = filesystem, root, split
        self.shard_rows, self.shard_bytes, self.row_group_rows = shard_rows, shard_bytes, row_group_rows
        self.rows = 0
        self.shards: list[str] = []
        self.files: dict[str, dict] = {}
        self._writer: pq.ParquetWriter | None = None
        self._in_shard_rows = self._in_shard_bytes = 0
        self._buffer: list[tuple[bytes, int, int, int]] = []
        self._buffer_bytes = 0
        filesystem.create_dir(f"{root}/{split}", recursive=True)

    def add(self, data: bytes, width: int, height: int, label: int) -> None:
        self._buffer.append((data, width, height, label))
        self._buffer_bytes += len(data)
        if (len(self._buffer) >= self.row_group_rows
                or self._in_shard_rows + len(self._buffer) >= self.shard_rows
                or self._in_shard_bytes + self._buffer_bytes >= self.shard_bytes):
            self._flush()

    def close(self) -> None:
        self._flush()
        self._close_shard()
        if not self.shards:
            self._open()
            self._writer.write_table(SCHEMA.empty_table())
            self._close_shard()

    def _open(self) -> None:
        shard = f"{self.split}/part-{len(self.shards):05d}.parquet"
        self.shards.append(shard)
        self._writer = pq.ParquetWriter(
            f"{self.root}/{shard}", SCHEMA, filesystem=self.filesystem,
            compression={"image": "NONE", "width": "SNAPPY", "height": "SNAPPY", "label": "SNAPPY", "index": "SNAPPY"},
            use_dictionary=["label"], write_statistics=["width", "height", "label", "index"],
            write_page_checksum=True,  # a damaged page fails its CRC when read (raysl.ingest.shards.locate)
        )
        self._in_shard_rows = self._in_shard_bytes = 0

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._open()
        count = len(self._buffer)
        images, widths, heights, labels = zip(*self._buffer)
        table = pa.table({
            "image": pa.array(images, pa.binary()), "width": pa.array(widths, pa.int32()),
            "height": pa.array(heights, pa.int32()), "label": pa.array(labels, pa.int64()),
            "index": pa.array(np.arange(self.rows, self.rows + count, dtype=np.int64)),
        }, schema=SCHEMA)
        self._writer.write_table(table, row_group_size=count)
        self.rows += count
        self._in_shard_rows += count
        self._in_shard_bytes += self._buffer_bytes
        self._buffer, self._buffer_bytes = [], 0
        if self._in_shard_rows >= self.shard_rows or self._in_shard_bytes >= self.shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        shard = self.shards[-1]
        self.files[shard] = describe_file(self.filesystem, f"{self.root}/{shard}")


@dataclass
class EncodedResult:
    """What writing the encoded splits produced (the manifest's numbers)."""

    splits: dict[str, dict]
    files: dict[str, dict]
    skipped: list[dict[str, str]]
    converted: int
    kept: int
    channels: int
    mean: list[float]
    std: list[float]
    sizes: dict[str, list[int]]
    notes: list[str] = field(default_factory=list)


def _bounded_map(executor: ThreadPoolExecutor, function: Callable, items: Iterable, window: int) -> Iterator:
    """`map(function, items)` in order on the executor, with at most `window` items in flight (so an item
    iterator that streams from disk is never read far ahead)."""
    pending: deque = deque()
    for item in items:
        pending.append(executor.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def write_encoded(
    out_root: str, filesystem: pafs.FileSystem, items: Iterable[Item], *, splits: tuple[str, ...],
    class_names: list[str], total: int | None, max_side: int | None, quality: int, workers: int | None,
    progress: bool, shard_rows: int = SHARD_ROWS, shard_bytes: int = SHARD_BYTES, row_group_rows: int = ROW_GROUP_ROWS,
    source_filesystem: pafs.FileSystem | None = None,
) -> EncodedResult:
    """Verify/re-encode `items` in a thread pool and write each split's shards under `out_root` (which
    must exist and hold no old shards). Items of a split not in `splits` are dropped."""
    source_filesystem = source_filesystem or filesystem
    writers = {split: ShardWriter(filesystem, out_root, split, shard_rows=shard_rows, shard_bytes=shard_bytes,
                                  row_group_rows=row_group_rows) for split in splits}
    class_counts = {split: np.zeros(max(len(class_names), 1), np.int64) for split in splits}
    gray_histogram = np.zeros(256, np.int64)
    rgb_histogram = np.zeros((3, 256), np.int64)
    widths, heights = [], []
    skipped: list[dict[str, str]] = []
    converted = 0
    all_gray = True

    def process(item: Item) -> tuple[Item, Encoded | str]:
        data = item.data
        if data is None:
            try:
                data = read_path(source_filesystem, item.path)
            except OSError as error:
                return item, f"cannot read: {error}"
        result = encode_image(data, max_side=max_side, quality=quality)
        item.data = None  # the source bytes are not needed any more (a kept file lives on in the result)
        return item, result

    threads = workers or os.cpu_count() or 1
    bar = tqdm(total=total, desc="encoding images", unit="file", disable=not progress)
    with ThreadPoolExecutor(max_workers=threads) as executor:
        for item, result in _bounded_map(executor, process, (item for item in items if item.split in writers),
                                         window=max(4 * threads, 32)):
            bar.update(1)
            if isinstance(result, str):
                skipped.append({"path": item.key, "reason": result})
                continue
            writers[item.split].add(result.data, result.width, result.height, item.label)
            if item.label >= 0:
                class_counts[item.split][item.label] += 1
            converted += result.converted
            all_gray &= result.gray
            widths.append(result.width)
            heights.append(result.height)
            if item.split == "train":
                if result.gray:
                    gray_histogram += result.histogram
                else:
                    rgb_histogram += np.asarray(result.histogram, np.int64).reshape(3, 256)
    bar.close()
    for writer in writers.values():
        writer.close()
    channels = 1 if all_gray else 3
    histograms = gray_histogram[None] if channels == 1 else rgb_histogram + gray_histogram[None]
    mean, std = histogram_stats(histograms)
    files = {shard: entry for writer in writers.values() for shard, entry in writer.files.items()}
    split_entries = {
        split: {
            "count": writer.rows,
            "class_counts": {name: int(count) for name, count in zip(class_names, class_counts[split])},
            "shards": list(writer.shards),
        }
        for split, writer in writers.items()
    }
    skipped.sort(key=lambda entry: entry["path"])
    return EncodedResult(split_entries, files, skipped, converted, len(widths), channels, mean, std,
                         {"width": summary(widths), "height": summary(heights)})


def histogram_stats(histograms: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in 0..1 from (C, 256) pixel-value histograms."""
    values = np.arange(256) / 255.0
    totals = np.maximum(histograms.sum(axis=1), 1)
    mean = histograms @ values / totals
    variance = histograms @ values**2 / totals - mean**2
    return [float(m) for m in mean], [float(s) for s in np.sqrt(np.maximum(variance, 0.0))]


def summary(values: list[int]) -> list[int]:
    """[min, median, max] (the median rounded down to an int), or [] when empty."""
    if not values:
        return []
    array = np.asarray(values, np.int32)
    return [int(array.min()), int(np.median(array)), int(array.max())]


# ---------------------------------------------------------------------------------------------- folders


def folder_items(plan, source: str, root: str, *, test_fraction: float, seed: int) -> tuple[list[Item], dict[str, int]]:
    """The image folder's candidates as Items in their final order: candidates without a given split are
    split per class (`test_fraction` of each class to test, at least one left in train, seeded), then rows
    are shuffled within each split with `seed` (paths only: nothing is read). Returns (items, counts)."""
    from raysl.ingest.source import user_path

    label_of = {name: index for index, name in enumerate(plan.class_names)}
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Item]] = {"train": [], "test": []}
    by_class: dict[int, list[Item]] = {}
    for candidate in plan.candidates:
        label = label_of[candidate.class_name] if candidate.class_name is not None else -1
        item = Item(candidate.split or "train", label, user_path(source, root, candidate.path), path=candidate.path)
        if candidate.split is None:
            by_class.setdefault(label, []).append(item)
        else:
            rows[candidate.split].append(item)
    for label in sorted(by_class):  # in path order
        members = by_class[label]
        test_count = min(round(len(members) * test_fraction), max(len(members) - 1, 0))
        test_rows = set(rng.permutation(len(members))[:test_count].tolist())
        for index, item in enumerate(members):
            item.split = "test" if index in test_rows else "train"
            rows[item.split].append(item)
    ordered = []
    for split in ("train", "test"):
        ordered.extend(rows[split][index] for index in rng.permutation(len(rows[split])).tolist())
    return ordered, {split: len(split_rows) for split, split_rows in rows.items()}
