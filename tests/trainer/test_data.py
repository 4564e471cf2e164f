"""Loading CIFAR-10: the real archive, checksums, damaged archives, the cache, downloads."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.conftest import make_archive, make_cifar, write_batches
from trainer import data as data_mod


def _cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if (
        cache.exists()) else []


class TestRealArchive:
    def test_real_archive_has_the_known_shapes_and_first_labels(
        self, real_cifar: data_mod.Cifar10
    ) -> None:
        assert real_cifar.train_x.shape == (50000, 3, 32, 32)
        assert real_cifar.test_x.shape == (10000, 3, 32, 32)
        assert real_cifar.train_x.dtype == np.uint8
        assert real_cifar.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
        assert real_cifar.test_y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]

    def test_real_training_set_has_the_published_channel_means(
        self, real_cifar: data_mod.Cifar10
    ) -> None:
        means = real_cifar.train_x[:5000].mean(axis=(0, 2, 3)) / 255
        np.testing.assert_allclose(means, data_mod.MEAN, atol=0.01)

    def test_split_is_45000_and_5000_disjoint_and_fixed(
        self, real_cifar: data_mod.Cifar10
    ) -> None:
        train, val = real_cifar.split()
        assert (len(train), len(val)) == (45000, 5000)
        assert not set(train.tolist()) & set(val.tolist())
        again_train, again_val = real_cifar.split()
        assert np.array_equal(val, again_val) and np.array_equal(train, again_train)


class TestLocalArchive:
    def test_archive_is_extracted_once_then_read_from_the_cache(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cifar = make_cifar(n_train=50, n_test=10)
        md5 = make_archive(tmp_path / "c.tar.gz", cifar)
        first = data_mod.load_cifar10(tmp_path / "c.tar.gz", md5, tmp_path / "cache")
        np.testing.assert_array_equal(first.train_x, cifar.train_x)
        np.testing.assert_array_equal(first.test_y, cifar.test_y)
        assert _cache_entries(tmp_path / "cache") == [f"cifar10-{md5}"]

        def no_second_extraction(*args: Any) -> None:
            raise AssertionError("the archive was read again")

        monkeypatch.setattr(data_mod, "_read_archive", no_second_extraction)
        second = data_mod.load_cifar10(tmp_path / "c.tar.gz", None, tmp_path / "cache")
        np.testing.assert_array_equal(second.train_x, cifar.train_x)

    def test_wrong_checksum_is_refused_and_nothing_is_cached(self, tmp_path: Path) -> None:
        make_archive(tmp_path / "c.tar.gz", make_cifar(n_train=50, n_test=10))
        with pytest.raises(data_mod.DataError, match=r"--data-md5.*expected 0{32}"):
            data_mod.load_cifar10(tmp_path / "c.tar.gz", "0" * 32, tmp_path / "cache")
        assert _cache_entries(tmp_path / "cache") == []

    def test_truncated_archive_is_refused_and_leaves_no_partial_cache(
        self, tmp_path: Path
    ) -> None:
        make_archive(tmp_path / "c.tar.gz", make_cifar(n_train=500, n_test=10))
        blob = (tmp_path / "c.tar.gz").read_bytes()
        (tmp_path / "cut.tar.gz").write_bytes(blob[: len(blob) // 2])
        with pytest.raises(data_mod.DataError, match="corrupt or truncated"):
            data_mod.load_cifar10(tmp_path / "cut.tar.gz", None, tmp_path / "cache")
        assert _cache_entries(tmp_path / "cache") == []

    def test_garbage_file_is_refused_as_corrupt(self, tmp_path: Path) -> None:
        (tmp_path / "c.tar.gz").write_bytes(b"not a tarball at all" * 100)
        with pytest.raises(data_mod.DataError, match="corrupt or truncated"):
            data_mod.load_cifar10(tmp_path / "c.tar.gz", None, tmp_path / "cache")

    def test_archive_without_a_batch_names_the_missing_batch(self, tmp_path: Path) -> None:
        folder = tmp_path / "cifar-10-batches-py"
        write_batches(folder, make_cifar(n_train=50, n_test=10))
        (folder / "data_batch_3").unlink()
        with pytest.raises(data_mod.DataError, match="data_batch_3"):
            data_mod.load_cifar10(tmp_path, None, tmp_path / "cache")

    def test_missing_source_is_refused_naming_the_option(self, tmp_path: Path) -> None:
        with pytest.raises(data_mod.DataError, match="--data: no such archive or folder"):
            data_mod.load_cifar10(tmp_path / "absent.tar.gz", None, tmp_path / "cache")

    def test_malformed_checksum_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(data_mod.DataError, match="32 hexadecimal"):
            data_mod.load_cifar10(tmp_path, "xyz", tmp_path / "cache")

    def test_pickle_that_calls_code_is_refused(self, tmp_path: Path) -> None:
        folder = tmp_path / "cifar-10-batches-py"
        write_batches(folder, make_cifar(n_train=50, n_test=10))

        class Evil:
            def __reduce__(self) -> tuple[Any, ...]:
                return (print, ("owned",))

        (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
        with pytest.raises(data_mod.DataError, match="forbidden global"):
            data_mod.load_cifar10(folder, None, tmp_path / "cache")

    def test_concurrent_loaders_extract_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        md5 = make_archive(tmp_path / "c.tar.gz", make_cifar(n_train=200, n_test=10))
        reads = []
        real_read = data_mod._read_archive

        def counting_read(path: Path) -> data_mod.Cifar10:
            reads.append(path)
            return real_read(path)

        monkeypatch.setattr(data_mod, "_read_archive", counting_read)
        results: list[data_mod.Cifar10] = []
        threads = [
            threading.Thread(target=lambda: results.append(
                data_mod.load_cifar10(tmp_path / "c.tar.gz", md5, tmp_path / "cache")))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 3 and len(reads) == 1


class TestFolder:
    @pytest.mark.parametrize("inner", [True, False], ids=["batches-folder", "parent-folder"])
    def test_extracted_folder_is_read_directly(self, tmp_path: Path, inner: bool) -> None:
        cifar = make_cifar(n_train=50, n_test=10)
        write_batches(tmp_path / "cifar-10-batches-py", cifar)
        source = tmp_path / "cifar-10-batches-py" if inner else tmp_path
        loaded = data_mod.load_cifar10(source, None, tmp_path / "cache")
        np.testing.assert_array_equal(loaded.train_x, cifar.train_x)
        assert not (tmp_path / "cache").exists()


class TestDownload:
    def test_download_is_verified_extracted_and_not_kept(
        self, tmp_path: Path, http_root: tuple[Path, str, Any]
    ) -> None:
        root, url, _ = http_root
        cifar = make_cifar(n_train=50, n_test=10)
        md5 = make_archive(root / "c.tar.gz", cifar)
        cache = tmp_path / "cache"
        loaded = data_mod.load_cifar10(f"{url}/c.tar.gz", md5, cache)
        np.testing.assert_array_equal(loaded.train_x, cifar.train_x)
        assert _cache_entries(cache) == [f"cifar10-{md5}", "downloads"]
        assert list((cache / "downloads").iterdir()) == []

        # Served no more: the second load comes from the cache alone.
        (root / "c.tar.gz").unlink()
        again = data_mod.load_cifar10(f"{url}/c.tar.gz", md5, cache)
        np.testing.assert_array_equal(again.test_y, cifar.test_y)

    def test_download_with_the_wrong_checksum_leaves_nothing_behind(
        self, tmp_path: Path, http_root: tuple[Path, str, Any]
    ) -> None:
        root, url, _ = http_root
        make_archive(root / "c.tar.gz", make_cifar(n_train=50, n_test=10))
        cache = tmp_path / "cache"
        # No checksum given: a URL is checked against the official archive's.
        with pytest.raises(data_mod.DataError, match=data_mod.OFFICIAL_MD5):
            data_mod.load_cifar10(f"{url}/c.tar.gz", None, cache)
        assert list((cache / "downloads").iterdir()) == []
        assert _cache_entries(cache) == ["downloads"]

    def test_unreachable_url_is_reported_as_unavailable(
        self, tmp_path: Path, http_root: tuple[Path, str, Any]
    ) -> None:
        _, url, _ = http_root
        with pytest.raises(data_mod.DataUnavailable, match="cannot download"):
            data_mod.load_cifar10(f"{url}/absent.tar.gz", "0" * 32, tmp_path / "cache")


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_BOHB_CACHE", "/some/cache")
    monkeypatch.setenv("NAS_BOHB_DATA", "/some/archive.tar.gz")
    assert data_mod.default_cache_dir() == Path("/some/cache")
    assert data_mod.default_source() == "/some/archive.tar.gz"
    monkeypatch.delenv("NAS_BOHB_CACHE")
    monkeypatch.delenv("NAS_BOHB_DATA")
    assert data_mod.default_cache_dir() == Path.home() / ".cache" / "nas-bohb"
    assert data_mod.default_source() == data_mod.OFFICIAL_URL
