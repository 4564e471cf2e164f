"""Shared factories for the trainer's tests: configurations, small archives, real CIFAR-10."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer import data as data_mod

REPO = Path(__file__).resolve().parents[2]
LOCAL_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-10-python.tar.gz"
LOCAL_ARCHIVE_MD5 = "de808eed20bae32db8b324f967887cf8"
# The result record's fields, as docs/architecture.md lists them.
RECORD_FIELDS = {
    "status", "validation_error", "test_error", "validation_loss", "train_loss",
    "budget_seconds", "train_seconds", "wall_seconds", "epochs", "steps", "n_params",
    "learning_curve", "device", "torch_version", "trainer_version", "seed", "config", "message",
}


def make_config(**overrides: Any) -> dict[str, Any]:
    """The smallest sensible network of the space, with the paper's training pipeline on."""
    config: dict[str, Any] = {
        "nr_residual_blocks_1": 1,
        "nr_residual_blocks_2": 1,
        "nr_residual_blocks_3": 1,
        "initial_filters": 8,
        "widen_factor_1": 1.0,
        "widen_factor_2": 1.0,
        "widen_factor_3": 1.0,
        "res_branches_1": 1,
        "res_branches_2": 2,
        "res_branches_3": 1,
        "learning_rate": 0.05,
        "batch_size": 32,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "alpha": 0.2,
        "length": 8,
        "death_rate": 0.1,
    }
    config.update(overrides)
    return config


def make_cifar(n_train: int = 640, n_test: int = 100, seed: int = 0) -> data_mod.Cifar10:
    """Random images with random labels, in CIFAR-10's array layout."""
    rng = np.random.default_rng(seed)
    return data_mod.Cifar10(
        train_x=rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        train_y=rng.integers(0, 10, n_train).astype(np.int64),
        test_x=rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        test_y=rng.integers(0, 10, n_test).astype(np.int64),
    )


def _batch_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    # The official batches are protocol-2 pickles with bytes keys.
    payload = {b"batch_label": b"synthetic", b"labels": [int(v) for v in y],
               b"data": x.reshape(len(x), -1)}
    return pickle.dumps(payload, protocol=2)


def write_batches(folder: Path, cifar: data_mod.Cifar10) -> None:
    """Write ``cifar`` as the six python-version batch files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(cifar.train_y)), 5)
    for i, idx in enumerate(parts, start=1):
        blob = _batch_bytes(cifar.train_x[idx], cifar.train_y[idx])
        (folder / f"data_batch_{i}").write_bytes(blob)
    (folder / "test_batch").write_bytes(_batch_bytes(cifar.test_x, cifar.test_y))


def make_archive(path: Path, cifar: data_mod.Cifar10) -> str:
    """Write ``cifar`` as a ``cifar-10-python.tar.gz`` at ``path``; return its MD5."""
    staging = path.parent / (path.name + ".staging") / "cifar-10-batches-py"
    write_batches(staging, cifar)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-py")
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def small_cifar() -> data_mod.Cifar10:
    return make_cifar()


@pytest.fixture(scope="session")
def real_source() -> tuple[str, str]:
    """The real archive and its MD5: the local copy beside the checkout, else the official."""
    if LOCAL_ARCHIVE.is_file():
        return str(LOCAL_ARCHIVE), LOCAL_ARCHIVE_MD5
    return data_mod.OFFICIAL_URL, data_mod.OFFICIAL_MD5


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory, real_source: tuple[str, str]) -> Path:
    """A cache folder holding real CIFAR-10, extracted once per test session."""
    cache = tmp_path_factory.mktemp("cifar-cache")
    data_mod.load_cifar10(real_source[0], real_source[1], cache)
    return cache


@pytest.fixture(scope="session")
def real_cifar(real_cache: Path, real_source: tuple[str, str]) -> data_mod.Cifar10:
    """Real CIFAR-10 arrays (read from the session's cache)."""
    return data_mod.load_cifar10(real_source[0], real_source[1], real_cache)


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str, type[_SlowHandler]]]:
    """A real local HTTP server over a temporary folder: (folder, base URL, handler class)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_SlowHandler,), {})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=os.fspath(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
