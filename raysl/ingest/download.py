"""`raysl prepare --download`: fetch the raw MNIST / Fashion-MNIST / CIFAR files, md5-checked.

Uses torchvision's mirrors, file lists and known md5s (`torchvision.datasets.utils.download_url`, which
retries redirects and verifies the checksum) so nothing here hard-codes a checksum.
"""

from __future__ import annotations

import os
from pathlib import Path

from raysl.errors import UserError

DOWNLOAD_KINDS = ("fashion-mnist", "mnist", "cifar10", "cifar100")


def default_download_dir(kind: str) -> str:
    """Where `--download` puts KIND's raw files when no SRC is given."""
    return str(Path.home() / ".cache" / "raysl" / "downloads" / kind)


def download_source(kind: str, directory: str) -> None:
    """Download KIND's raw files into the local `directory` (skipping files already there and intact).

    idx files are kept gzipped (the idx reader accepts .gz); CIFAR archives are extracted next to the
    archive, so `directory` then holds `cifar-10-batches-py/` or `cifar-100-python/`.
    """
    if kind not in DOWNLOAD_KINDS:
        raise UserError(f"--download is not available for {kind!r}; it works for {', '.join(DOWNLOAD_KINDS)}")
    if "://" in directory and not directory.startswith("file://"):
        raise UserError(
            f"--download writes to a local directory, not {directory}; download into a local SRC, then copy it"
        )
    directory = os.path.expanduser(directory.removeprefix("file://"))
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST  # heavy import: only when used
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    os.makedirs(directory, exist_ok=True)
    if kind in ("fashion-mnist", "mnist"):
        dataset = FashionMNIST if kind == "fashion-mnist" else MNIST
        for filename, md5 in dataset.resources:
            errors = []
            for mirror in dataset.mirrors:
                try:
                    download_url(mirror + filename, root=directory, filename=filename, md5=md5)
                    break
                except Exception as error:  # urllib, socket and md5 failures all mean "try the next mirror"
                    errors.append(f"{mirror}{filename}: {error}")
            else:
                debian = ", or `apt-get install dataset-fashion-mnist` on Debian" if kind == "fashion-mnist" else ""
                raise UserError(
                    f"could not download {kind} file {filename} into {directory}: {'; '.join(errors)}. "
                    f"Fetch the four idx files by hand from {dataset.mirrors[0]} "
                    f"({', '.join(name for name, _ in dataset.resources)}) into {directory} "
                    f"and rerun without --download{debian}"
                )
        return
    dataset = CIFAR10 if kind == "cifar10" else CIFAR100
    try:  # an archive already there with the right md5 is not fetched again, only extracted
        download_and_extract_archive(
            dataset.url, download_root=directory, filename=dataset.filename, md5=dataset.tgz_md5
        )
    except Exception as error:  # network, md5 or tar failure
        raise UserError(
            f"could not download {dataset.url} into {directory}: {error}. Fetch it by hand "
            f"(e.g. `curl -O {dataset.url}`), extract it with `tar xzf {dataset.filename}` in {directory} "
            "and rerun without --download"
        ) from error
