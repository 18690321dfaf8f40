"""Fetch the ADE20K archive (ADEChallengeData2016.zip), verify its published checksum, unpack
it atomically.

Nothing that a later run would trust is left behind on failure: the archive is downloaded to a
temporary file and unpacked into a temporary directory next to the target, and only a verified,
fully unpacked tree is renamed to `dataset.root`. A checksum mismatch deletes both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any

from ..progress import progress
from .ade20k import check_layout

log = logging.getLogger("layerprobe.download")
# The official archive and the SHA-1 published with it by GluonCV's and Segmenter's ADE20K
# preparation scripts (219e1696…): the same bytes every mmseg user downloads.
ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE20K_CHECKSUM = "sha1:219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
BLOCK = 1 << 20


class ChecksumError(RuntimeError):
    """The downloaded archive is not the published one."""


def parse_checksum(checksum: str) -> tuple[str, str]:
    """'sha1:<hex>' -> ('sha1', '<hex>'); md5, sha1 and sha256 are accepted."""
    algorithm, _, digest = checksum.partition(":")
    if algorithm not in ("md5", "sha1", "sha256") or not digest:
        raise ValueError(f"checksum {checksum!r}: expected md5:<hex>, sha1:<hex> or sha256:<hex>")
    return algorithm, digest.lower()


def download(url: str, target: Path, checksum: str) -> None:
    """`url` (http(s), ftp or file) to `target`, hashing on the way; raises ChecksumError on a mismatch."""
    algorithm, expected = parse_checksum(checksum)
    digest = hashlib.new(algorithm)
    with urllib.request.urlopen(url) as source, open(target, "wb") as out:  # noqa: S310 - a configured URL
        total = int(source.headers.get("Content-Length") or 0) or None
        for block in progress(iter(lambda: source.read(BLOCK), b""), desc=f"download {Path(url).name}",
                              total=None if total is None else -(-total // BLOCK), unit="MiB"):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != expected:
        raise ChecksumError(f"{url}: {algorithm} {digest.hexdigest()} differs from the published {expected} "
                            "(config key dataset.checksum); the download is damaged or not the official archive")


def fetch_ade20k(url: str, checksum: str, root: str | Path) -> dict[str, Any]:
    """Download, verify and unpack the archive so that `root` is its ADEChallengeData2016 folder."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root}: already exists (config key dataset.root); remove it or set "
                              "dataset.download: false")
    root.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    archive = root.parent / f".{root.name}.{token}.zip.part"
    unpacked = root.parent / f".{root.name}.{token}.unpacking"
    try:
        log.info("downloading %s", url)
        download(url, archive, checksum)
        log.info("%s verified (%s); unpacking", archive.name, checksum)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)
        top = _dataset_folder(unpacked)
        sizes = check_layout(top)  # the layout is right before anything is named dataset.root
        record_archive(top, url, checksum)
        os.rename(top, root)
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
    log.info("%s: %s images", root, sizes)
    return {"root": str(root), "url": url, "checksum": checksum, "images": sizes}


ARCHIVE_RECORD = ".layerprobe-archive.json"  # in the unpacked root: what it was unpacked from


def record_archive(root: Path, url: str, checksum: str) -> None:
    """The verified archive and the content digest of what it unpacked to: while the files still
    give that digest, the data's identity is the archive's checksum (fingerprint.dataset)."""
    from .digest import dataset_digest

    digest = dataset_digest(root, {}, cache=None)  # a temporary path: nothing worth caching
    (root / ARCHIVE_RECORD).write_text(json.dumps({"url": url, "checksum": checksum, "digest": digest}))


def unpacked_archive(root: str | Path) -> dict[str, str] | None:
    """The archive record of a root fetch_ade20k unpacked, None for a root put there otherwise."""
    try:
        return json.loads((Path(root) / ARCHIVE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _dataset_folder(unpacked: Path) -> Path:
    """The archive's ADEChallengeData2016 folder (the official zip holds exactly that)."""
    if (unpacked / "images").is_dir():
        return unpacked
    children = [p for p in unpacked.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / "images").is_dir():
        return children[0]
    raise RuntimeError(f"archive unpacked to {unpacked} holds no ADEChallengeData2016 folder with images/")
