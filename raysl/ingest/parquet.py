"""A Parquet source (an image column of bytes or {bytes, path} structs and a label column) planned and read.

Imports raysl.ingest.external.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysl.errors import UserError
from raysl.ingest.external import ExternalPlan, Unit, finish_plan, list_inputs, source_split_of
from raysl.io.storage import join_uri

PARQUET_BATCH_ROWS = 64


def plan_parquet(source: str, *, image_column: str = "image", label_column: str = "label", test_fraction: float,
                 seed: int, unlabeled: bool = False) -> ExternalPlan:
    """First pass over Parquet files: schema checks and the label column (no image bytes are read)."""
    filesystem, _, files = list_inputs(source, ".parquet")
    units, names_hint, notes = [], None, []
    for path, relative in files:
        shown = join_uri(source, relative) if not any(c in source for c in "*?[") else relative
        try:
            parquet = pq.ParquetFile(path, filesystem=filesystem)
        except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise UserError(f"{shown} is not a readable Parquet file ({error}); replace or remove it") from error
        schema = parquet.schema_arrow
        if image_column not in schema.names:
            raise UserError(f"{shown} has no column {image_column!r} (it has {', '.join(schema.names)}); "
                            "name the image column with --image-column")
        image_type = schema.field(image_column).type
        if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type) or (
                pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0)):
            raise UserError(f"{shown}: column {image_column!r} is {image_type}, expected binary (encoded image "
                            "bytes) or a struct with a `bytes` field (the Hugging Face layout)")
        unit = Unit(path, relative, source_split_of(relative))
        if label_column in schema.names:
            label_type = schema.field(label_column).type
            column = parquet.read(columns=[label_column]).column(0)
            if pa.types.is_integer(label_type):
                unit.raw_labels = column.fill_null(-1).to_numpy().astype(np.int64)
            elif pa.types.is_string(label_type) or pa.types.is_large_string(label_type):
                unit.raw_labels = column.to_pylist()
            else:
                raise UserError(f"{shown}: column {label_column!r} is {label_type}, expected int or string labels; "
                                "name the label column with --label-column")
            names_hint = names_hint or _hub_class_names(schema, label_column)
        else:
            unit.raw_labels = np.full(parquet.metadata.num_rows, -1, np.int64)
            if not notes:
                notes.append(f"no {label_column!r} column in {shown} (and maybe others): its rows are unlabeled")
        units.append(unit)
    return finish_plan("parquet", source, filesystem, units, names_hint=names_hint, test_fraction=test_fraction,
                        seed=seed, unlabeled=unlabeled, skipped=[], notes=notes, image_column=image_column,
                        label_column=label_column)


def _hub_class_names(schema: pa.Schema, label_column: str) -> list[str] | None:
    """The ClassLabel names the Hugging Face hub stores in the schema metadata, if any."""
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        feature = info.get("info", {}).get("features", {}).get(label_column, {})
        names = feature.get("names")
        return [str(name) for name in names] if isinstance(names, list) and names else None
    except (ValueError, AttributeError):
        return None
