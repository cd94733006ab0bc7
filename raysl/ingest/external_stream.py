"""A Parquet or WebDataset plan's rows streamed as Items: files in the plan's seeded order, rows mixed by a
seeded shuffle buffer per split.

Imports raysl.ingest.external, raysl.ingest.parquet, raysl.ingest.webdataset.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysl.errors import UserError
from raysl.ingest.encoded import Item
from raysl.ingest.external import SHUFFLE_BUFFER, ExternalPlan, Unit
from raysl.ingest.parquet import PARQUET_BATCH_ROWS
from raysl.ingest.webdataset import image_member, samples
from raysl.io.storage import join_uri


def _unit_rows(plan: ExternalPlan, unit: Unit, source: str) -> Iterator[tuple[int, bytes | None, str]]:
    """(row number, image bytes or None, key) for each row/sample of a unit, streaming."""
    shown = join_uri(source, unit.relative)
    if plan.kind == "parquet":
        parquet = pq.ParquetFile(unit.path, filesystem=plan.filesystem)
        row = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[plan.image_column]):
            column = batch.column(0)
            paths = None
            if pa.types.is_struct(column.type):
                if column.type.get_field_index("path") >= 0:
                    paths = column.field("path").to_pylist()
                column = column.field("bytes")
            for index, data in enumerate(column.to_pylist()):
                name = f"{shown} row {row}" + (f" ({paths[index]})" if paths and paths[index] else "")
                yield row, data, name
                row += 1
        return
    with plan.filesystem.open_input_stream(unit.path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        row = 0
        for key, members in samples(tar, read_images=True):
            extension = image_member(members)
            if extension is None:
                continue  # reported by the first pass
            yield row, members[extension], f"{shown}:{key}.{extension}"
            row += 1


def external_items(plan: ExternalPlan, source: str, *, seed: int, shuffle_buffer: int = SHUFFLE_BUFFER) -> Iterator[Item]:
    """The plan's rows as Items, streaming: units in the plan's (seeded) order, rows mixed by a seeded shuffle
    buffer of `shuffle_buffer` rows per split."""
    rng = np.random.default_rng([seed, 1])
    buffers: dict[str, list[Item]] = {"train": [], "test": []}
    for unit in plan.units:
        for row, data, key in _unit_rows(plan, unit, source):
            if row >= len(unit.labels):
                raise UserError(f"{join_uri(source, unit.relative)} changed while being read; prepare again")
            split = unit.split or ("test" if unit.to_test[row] else "train")
            item = Item(split, int(unit.labels[row]), key, data=data if data is not None else b"")
            buffer = buffers[split]
            if len(buffer) < shuffle_buffer:
                buffer.append(item)
                continue
            index = int(rng.integers(len(buffer)))
            buffer[index], item = item, buffer[index]
            yield item
    for buffer in buffers.values():
        for index in rng.permutation(len(buffer)).tolist():
            yield buffer[index]
        buffer.clear()
