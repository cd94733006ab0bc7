"""A prepared dataset's shards as files: what the manifest records of each (size, checksum, rows, row groups),
the checks a run makes before it starts, and reads that name the damaged shard and row group.

The manifest's `files` maps each shard's path (relative to the dataset) to
`{"bytes": int, "sha256": hex, "rows": int, "row_groups": int}`. Datasets prepared before raysl recorded
them have no `files`: their shards are not checked.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysl.errors import UserError

CHUNK = 8 * 2**20


class DamagedShardError(UserError):
    """A shard of a prepared dataset cannot be read or does not match its manifest entry; `uri` and `shard`
    name it when the failing read knew which (then no search is needed to record it)."""

    def __init__(self, message: str, uri: str | None = None, shard: str | None = None):
        super().__init__(message)
        self.uri, self.shard = uri, shard


def sha256_of(filesystem: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_file(filesystem: pafs.FileSystem, path: str) -> dict:
    """The manifest entry of a shard just written: its size, sha256, rows and row groups."""
    metadata = pq.read_metadata(path, filesystem=filesystem)
    return {
        "bytes": int(filesystem.get_file_info(path).size),
        "sha256": sha256_of(filesystem, path),
        "rows": int(metadata.num_rows),
        "row_groups": int(metadata.num_row_groups),
    }


def how_to_repair(manifest: dict, uri: str) -> str:
    kind, source = manifest.get("kind", "KIND"), manifest.get("source", "SRC")
    return f"re-prepare it: `raysl prepare {kind} {source} --out {uri}` (or copy the shard again from where it came)"


def check_shards(uri: str, manifest: dict, *, checksum: bool = False, splits: tuple[str, ...] | None = None) -> list[str]:
    """Problems with the shards of `manifest` (at `uri`): missing, or not the recorded size (always checked,
    one metadata call per shard), or (with `checksum`) not the recorded sha256. Empty when all is well."""
    from raysl.io.storage import open_filesystem

    entries = manifest.get("files") or {}
    filesystem, root = open_filesystem(uri)
    problems = []
    for split, info in manifest["splits"].items():
        if splits is not None and split not in splits:
            continue
        shards = info["shards"]
        found = {item.path: item for item in filesystem.get_file_info([f"{root}/{shard}" for shard in shards])}
        for shard in shards:
            entry, item = entries.get(shard), found.get(f"{root}/{shard}")
            if item is None or item.type != pafs.FileType.File:
                problems.append(f"{uri}/{shard}: missing")
            elif entry is None:
                continue
            elif item.size != entry["bytes"]:
                problems.append(f"{uri}/{shard}: {item.size} bytes, the manifest says {entry['bytes']} (truncated or replaced)")
            elif checksum and sha256_of(filesystem, f"{root}/{shard}") != entry["sha256"]:
                problems.append(f"{uri}/{shard}: sha256 differs from the manifest's (the content is damaged)")
    return problems


def require_intact(uri: str, manifest: dict, *, checksum: bool = False, splits: tuple[str, ...] | None = None) -> None:
    problems = check_shards(uri, manifest, checksum=checksum, splits=splits)
    if problems:
        raise DamagedShardError(
            f"prepared dataset {uri} is damaged ({len(problems)} shard(s)):\n  " + "\n  ".join(problems[:10])
            + ("\n  ..." if len(problems) > 10 else "") + f"\n{how_to_repair(manifest, uri)}"
        )


def locate(filesystem: pafs.FileSystem, path: str, columns: list[str] | None = None) -> str:
    """Where a shard fails to read: 'row group N' (the first that fails), 'its footer', or '' if it reads."""
    try:
        parquet = pq.ParquetFile(path, filesystem=filesystem, page_checksum_verification=True)
    except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        return f"its footer ({_first_line(error)})"
    for group in range(parquet.num_row_groups):
        try:
            parquet.read_row_group(group, columns=columns)
        except Exception as error:  # noqa: BLE001
            return f"row group {group} of {parquet.num_row_groups} ({_first_line(error)})"
    return ""


def read_table(filesystem: pafs.FileSystem, path: str, columns: list[str] | None, *, uri: str, shard: str,
               manifest: dict | None = None) -> pa.Table:
    """pq.read_table, but a failure raises DamagedShardError naming the shard, the row group and the fix."""
    try:
        return pq.read_table(path, columns=columns, filesystem=filesystem, page_checksum_verification=True)
    except Exception as error:  # noqa: BLE001
        where = locate(filesystem, path, columns) or _first_line(error)
        raise DamagedShardError(
            f"shard {uri}/{shard} cannot be read: {where}. " + how_to_repair(manifest or {}, uri), uri=uri, shard=shard,
        ) from None


def shard_damage(uri: str, manifest: dict, shard: str, columns: list[str] | None = None) -> str:
    """What is wrong with one shard ('' when it is there, matches its manifest entry and reads)."""
    from raysl.io.storage import open_filesystem

    filesystem, root = open_filesystem(uri)
    path = f"{root}/{shard}"
    entry = (manifest.get("files") or {}).get(shard)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        return f"shard {uri}/{shard} is missing. {how_to_repair(manifest, uri)}"
    bad_sum = entry is not None and (info.size != entry["bytes"] or sha256_of(filesystem, path) != entry["sha256"])
    where = locate(filesystem, path, columns) if bad_sum or entry is None else ""
    if not (bad_sum or where):
        return ""
    detail = f": {where}" if where else " (its checksum differs from the manifest's)"
    return f"shard {uri}/{shard} is damaged{detail}. {how_to_repair(manifest, uri)}"


def find_damage(uri: str, manifest: dict, columns: list[str] | None = None,
                splits: tuple[str, ...] = ("train",)) -> tuple[str, str] | None:
    """After a read failed somewhere in a split: (the first shard that is missing, does not match its
    checksum or fails to read, the message naming it and its row group), or None when every shard is sound."""
    for split in splits:
        for shard in manifest["splits"][split]["shards"]:
            message = shard_damage(uri, manifest, shard, columns)
            if message:
                return shard, message
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
