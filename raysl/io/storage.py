"""The filesystem helpers every part of raysl shares: paths and URIs (a local path, relative or `~`, or s3://,
gs://, file://, hdfs://) opened through pyarrow.fs, and the small files next to results (manifests, markers,
leaderboards, configs). The readers, the writers, the sweep and the report all go through here."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from raysl.errors import UserError


def is_remote(uri: str) -> bool:
    """A URI with a scheme (s3://, gs://, file://...), not a local path."""
    return "://" in uri


def absolute_path(uri: str) -> str:
    """A local path made absolute (and `~` expanded), as a Ray worker in another directory must see it; URIs as given."""
    return uri if is_remote(uri) else os.path.abspath(os.path.expanduser(uri))


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path (relative or `~` allowed) or a URI such as s3://, gs://, file://."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), absolute_path(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError / ArrowNotImplementedError
        raise UserError(
            f"cannot open {uri}: {error}. Use a local path or a file://, s3://, gs:// or hdfs:// URI"
        ) from error


def join_uri(uri: str, *parts: str) -> str:
    """`uri/part/...` for local paths and URIs alike."""
    return "/".join([uri.rstrip("/"), *parts])


def read_path(filesystem: pafs.FileSystem, path: str) -> bytes:
    """The whole content of one file of an opened filesystem."""
    with filesystem.open_input_file(path) as stream:
        return stream.readall()


def is_file(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type == pafs.FileType.File


def is_dir(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type == pafs.FileType.Directory


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


def delete_dir(uri: str, *, quiet: bool = False) -> None:
    """Remove the directory and all under it if it is there; `quiet`: best effort, errors ignored (for cleaning
    up after a failure, which matters more)."""
    try:
        filesystem, path = open_filesystem(uri)
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            filesystem.delete_dir(path)
    except Exception:  # noqa: BLE001
        if not quiet:
            raise


def delete_file(uri: str) -> None:
    """Remove the file if it is there."""
    filesystem, path = open_filesystem(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        filesystem.delete_file(path)
