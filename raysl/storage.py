"""Small files next to results, on a local path or object storage (s3://, gs://) alike, via pyarrow.fs."""

from __future__ import annotations

import pyarrow.fs as pafs

from raysl.data.sources import open_filesystem


def read_text(uri: str) -> str | None:
    """The file's text, or None when there is no such file."""
    filesystem, path = open_filesystem(uri)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.readall().decode("utf-8")


def read_bytes(uri: str) -> bytes | None:
    """The file's bytes, or None when there is no such file."""
    filesystem, path = open_filesystem(uri)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.readall()


def write_bytes(uri: str, data: bytes) -> None:
    filesystem, path = open_filesystem(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(uri: str, pattern: str = "*") -> list[str]:
    """Names of the files directly under uri matching the glob pattern (none when it does not exist)."""
    import fnmatch

    filesystem, path = open_filesystem(uri)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(info.base_name for info in infos if info.type == pafs.FileType.File and fnmatch.fnmatch(info.base_name, pattern))


def exists(uri: str) -> bool:
    filesystem, path = open_filesystem(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def list_dirs(uri: str) -> list[str]:
    """Names of the directories directly under uri (none when it does not exist)."""
    filesystem, path = open_filesystem(uri)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)


def delete_file(uri: str) -> None:
    """Remove the file if it is there."""
    filesystem, path = open_filesystem(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        filesystem.delete_file(path)
