"""Where a run's data is: data.path as Ray Data will see it, or data.kind / data.source prepared on first use
into data.cache_dir (and the same for each data.pool entry). A UserError names the field.

Imports raysl.config, raysl.ingest.cache, raysl.ingest.dataset, raysl.io.
"""

from __future__ import annotations

from raysl.config import RunConfig
from raysl.errors import UserError
from raysl.io.storage import absolute_path


def _resolve(path: str | None, kind: str | None, source: str | None, cache_dir: str, image_size: int | None, field: str,
             log=print) -> str:
    from raysl.ingest.cache import ensure_prepared
    from raysl.ingest.dataset import read_manifest

    if path:
        path = absolute_path(path)  # as Ray Data will see it
        try:
            read_manifest(path)
        except UserError as error:
            raise UserError(f"{field}: {error}") from None
        return path
    try:
        return ensure_prepared(kind, source, absolute_path(cache_dir), image_size=image_size, log=log)
    except UserError as error:
        raise UserError(f"{field.rsplit('.', 1)[0]}.kind {kind}: {error}") from None


def resolve_data(run: RunConfig, log=print) -> str:
    """The prepared dataset's URI: data.path, or a cached copy of data.kind prepared on first use."""
    return _resolve(run.data.path, run.data.kind, run.data.source, run.data.cache_dir, run.data.image_size, "data.path", log)


def resolve_pool(run: RunConfig, log=print) -> list[str]:
    """The URIs of data.pool's datasets (prepared into data.cache_dir on first use), in order."""
    return [
        _resolve(entry.path, entry.kind, entry.source, run.data.cache_dir, None, f"data.pool.{index}.path", log)
        for index, entry in enumerate(run.data.pool)
    ]
