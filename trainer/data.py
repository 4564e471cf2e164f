"""CIFAR-10 from the standard python-version archive: fetch, verify, extract once, split.

Every trial of a search loads the same data, and short trials are dominated by start-up, so
the archive is read once (one pass over the tar, no files extracted) into four ``.npy`` arrays
in a cache folder keyed by the archive's MD5. Later trials load those arrays in a fraction
of a second. The cache is written to a temporary folder and renamed into place, under a file
lock, so concurrent trainers extract once and no reader ever sees a half-written cache.

A source is one of: a URL (downloaded with the expected MD5 checked, the official one by
default), a local ``cifar-10-python.tar.gz`` (checked only when an MD5 is given), or an
extracted folder holding ``cifar-10-batches-py`` or its batch files. Mirrors and rebuilt copies
have other checksums, so the expected MD5 is a setting, never hard-coded.

The 50,000 training images are split into 45,000 for training and 5,000 for validation with a
fixed seed, the same for every trial, so that validation errors of different trials compare
(Zela et al. 2018). The 10,000 test images are only reported, never optimised.

.. note::
   The batches are Python pickles. They are read with an unpickler that only admits the numpy
   array constructors, so an archive from an unexpected source cannot run code.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
# One split for every trial of every search, so validation errors compare.
SPLIT_SEED = 0
VALIDATION_SIZE = 5000
# Per-channel statistics of the 50,000 training images.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

_ARRAYS = ("train_x", "train_y", "test_x", "test_y")
_CHUNK = 1 << 20


class DataError(Exception):
    """The data source is missing, unreadable, corrupt, or fails its checksum."""


class DataUnavailable(DataError):
    """The source could not be fetched (network or server failure); retrying may help."""


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 as arrays: images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    md5: str | None = None

    def split(
        self, validation_size: int = VALIDATION_SIZE, seed: int = SPLIT_SEED
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the training and validation parts of the training set.

        A set smaller than ``2 * validation_size`` (a test fixture) keeps a tenth for
        validation.
        """
        n = len(self.train_y)
        if n < 2 * validation_size:
            validation_size = max(1, n // 10)
        order = np.random.default_rng(seed).permutation(n)
        return np.sort(order[validation_size:]), np.sort(order[:validation_size])


def default_cache_dir() -> Path:
    """``$NAS_BOHB_CACHE``, else ``~/.cache/nas-bohb``."""
    return Path(os.environ.get("NAS_BOHB_CACHE") or Path.home() / ".cache" / "nas-bohb")


def default_source() -> str:
    """``$NAS_BOHB_DATA``, else the official archive's URL."""
    return os.environ.get("NAS_BOHB_DATA") or OFFICIAL_URL


def is_url(source: str | os.PathLike[str]) -> bool:
    return "://" in str(source)


def load_cifar10(
    source: str | os.PathLike[str],
    md5: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Cifar10:
    """Load CIFAR-10 from a URL, an archive or an extracted folder (see the module doc).

    ``md5`` is the expected checksum of the archive: for a URL it defaults to the official
    archive's; for a local archive it is checked only when given. Raises :class:`DataError`.
    """
    started = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    md5 = md5.lower() if md5 else None
    if md5 is not None and (len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5)):
        raise DataError(f"--data-md5: expected 32 hexadecimal digits, got {md5!r}")

    if is_url(source):
        data = _load_url(str(source), md5 or OFFICIAL_MD5, cache)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            data = _read_folder(path)
        elif path.is_file():
            data = _load_archive(path, md5, cache)
        else:
            raise DataError(f"--data: no such archive or folder: {path}")
    logger.info(
        "CIFAR-10 ready from %s in %.1f s: %d training and %d test images.",
        source, time.perf_counter() - started, len(data.train_y), len(data.test_y),
    )
    return data


def _load_url(url: str, md5: str, cache: Path) -> Cifar10:
    # A cache hit needs no network at all.
    cached = _read_cache(cache, md5)
    if cached is not None:
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache, md5):
        # Another trainer may have finished the work while this one waited for the lock.
        cached = _read_cache(cache, md5)
        if cached is not None:
            return cached
        downloads = cache / "downloads"
        downloads.mkdir(exist_ok=True)
        archive = downloads / f"cifar-10-python-{md5}.tar.gz"
        # A verified archive left by an interrupted extraction is reused.
        if not archive.is_file() or _md5_of(archive) != md5:
            _download(url, archive, md5)
        data = _extract_to_cache(archive, md5, cache)
        # The arrays hold everything; the archive would only double the disk use.
        archive.unlink(missing_ok=True)
        return data


def _load_archive(archive: Path, md5: str | None, cache: Path) -> Cifar10:
    # The checksum is the cache key, so it is computed even when nothing is expected.
    actual = _md5_of(archive)
    if md5 is not None and actual != md5:
        raise DataError(
            f"--data-md5: archive {archive} has MD5 {actual}, expected {md5} "
            "(a different or damaged copy; pass its own checksum if it is a known rebuild)"
        )
    cached = _read_cache(cache, actual)
    if cached is not None:
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache, actual):
        return _read_cache(cache, actual) or _extract_to_cache(archive, actual, cache)


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path, md5: str) -> None:
    """Stream ``url`` to ``target`` through a ``.part`` file, checking the MD5 on the way."""
    logger.info("Downloading CIFAR-10 from %s.", url)
    started = time.perf_counter()
    part = target.with_name(target.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DataUnavailable(f"--data: cannot download {url}: {exc}") from exc
    if digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise DataError(
            f"--data-md5: download of {url} has MD5 {digest.hexdigest()}, expected {md5} "
            "(truncated download, or a mirror with other contents: pass its checksum)"
        )
    os.replace(part, target)
    logger.info(
        "Downloaded %d bytes in %.1f s.", target.stat().st_size, time.perf_counter() - started
    )


@contextlib.contextmanager
def _locked(cache: Path, md5: str) -> Iterator[None]:
    """Hold an exclusive lock for one checksum, so concurrent trainers extract once."""
    with (cache / f".cifar10-{md5}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cache_path(cache: Path, md5: str) -> Path:
    return cache / f"cifar10-{md5}"


def _read_cache(cache: Path, md5: str) -> Cifar10 | None:
    folder = _cache_path(cache, md5)
    if not folder.is_dir():
        return None
    try:
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
    except (OSError, ValueError) as exc:
        # A cache folder only appears complete (by rename); damage came from outside.
        logger.warning("Cache %s is unreadable (%s); extracting again.", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return Cifar10(md5=md5, **arrays)


def _extract_to_cache(archive: Path, md5: str, cache: Path) -> Cifar10:
    """Read ``archive`` once and publish its arrays atomically under the cache (lock held)."""
    started = time.perf_counter()
    # Left-overs of killed extractions: nobody else writes them while the lock is held.
    for stale in cache.glob(f".cifar10-{md5}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)

    data = _read_archive(archive)
    tmp = Path(tempfile.mkdtemp(prefix=f".cifar10-{md5}.tmp-", dir=cache))
    try:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(data, name))
        (tmp / "meta.json").write_text(json.dumps({"md5": md5, "source": str(archive)}))
        # The rename is the commit: readers see a complete cache folder or none.
        os.rename(tmp, _cache_path(cache, md5))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "Extracted %s into %s in %.1f s.",
        archive, _cache_path(cache, md5), time.perf_counter() - started,
    )
    return Cifar10(data.train_x, data.train_y, data.test_x, data.test_y, md5=md5)


def _read_archive(archive: Path) -> Cifar10:
    """One pass over the gzipped tar, unpickling the six batches from memory."""
    blobs: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in (*TRAIN_BATCHES, TEST_BATCH):
                    f = tar.extractfile(member)
                    assert f is not None  # a regular file always has contents
                    blobs[name] = (f.read(), f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"--data: archive {archive} is corrupt or truncated: {exc}") from exc
    batches = {name: _parse_batch(blob, where) for name, (blob, where) in blobs.items()}
    return _assemble(batches, str(archive))


def _read_folder(folder: Path) -> Cifar10:
    # Accept the folder the archive unpacks to or the one holding it.
    inner = folder / "cifar-10-batches-py"
    if inner.is_dir():
        folder = inner
    batches = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        path = folder / name
        if path.is_file():
            batches[name] = _parse_batch(path.read_bytes(), str(path))
    return _assemble(batches, str(folder))


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR-10 batch holds: numpy arrays, dtypes, bytes, containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            # How Python 3's protocol 2 spells a bytes object (batches rebuilt with Python 3).
            return codecs.encode
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            # numpy's own array reconstructor, wherever this numpy version keeps it.
            return np.zeros(1).__reduce__()[0]
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a CIFAR-10 batch")


def _parse_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        # The official batches are Python 2 pickles; their str keys arrive as bytes.
        raw = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
        x = np.asarray(batch["data"], dtype=np.uint8)
        y = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, AttributeError, ValueError,
            TypeError) as exc:
        raise DataError(f"--data: {where} is not a CIFAR-10 batch: {exc}") from exc
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise DataError(f"--data: {where} has data {x.shape} and {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"--data: {where} has labels outside 0..9")
    return x.reshape(-1, 3, 32, 32), y


def _assemble(batches: dict[str, tuple[np.ndarray, np.ndarray]], where: str) -> Cifar10:
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in batches]
    if missing:
        raise DataError(f"--data: {where} lacks the CIFAR-10 batch file(s) {', '.join(missing)}")
    train = [batches[n] for n in TRAIN_BATCHES]
    return Cifar10(
        train_x=np.ascontiguousarray(np.concatenate([x for x, _ in train])),
        train_y=np.concatenate([y for _, y in train]),
        test_x=np.ascontiguousarray(batches[TEST_BATCH][0]),
        test_y=batches[TEST_BATCH][1],
    )
