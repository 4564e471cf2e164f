"""Where the operator's credentials come from, for its own client and for kopf alike.

No cluster: the service-account folder and the kubeconfig are files written here, and
nothing connects. The install test (``tests/chart/test_install.py``) runs the operator
with these credentials against the real API server, in-cluster and as a pod.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from controller.kube import handlers
from controller.kube.client import SERVICE_ACCOUNT_DIR_ENV, load_configuration


@pytest.fixture
def service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text("first-token")
    (folder / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (folder / "namespace").write_text("operators\n")
    monkeypatch.setenv(SERVICE_ACCOUNT_DIR_ENV, str(folder))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    return folder


def test_the_service_account_folder_of_the_variable_wins_and_kopf_gets_the_same(
    service_account: Path,
) -> None:
    loaded = load_configuration()
    assert loaded.service_account_dir == service_account
    assert loaded.namespace == "operators"
    assert loaded.config.host == "https://10.0.0.1:6443"
    assert loaded.config.ssl_ca_cert == str(service_account / "ca.crt")

    info = handlers.login()
    assert info.server == "https://10.0.0.1:6443"
    assert info.ca_path == str(service_account / "ca.crt")
    assert (info.scheme or "").lower() == "bearer" and info.token == "first-token"
    assert info.default_namespace == "operators"
    assert info.certificate_path is None and not info.insecure


def test_a_rotated_token_is_read_from_the_file_at_the_next_login(service_account: Path) -> None:
    assert handlers.login().token == "first-token"
    (service_account / "token").write_text("second-token")
    assert handlers.login().token == "second-token"
    assert load_configuration().config.get_api_key_with_prefix("BearerToken").endswith(
        "second-token")


def test_without_a_service_account_the_kubeconfig_token_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SERVICE_ACCOUNT_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path, {"token": "kube-token"})))
    loaded = load_configuration()
    assert loaded.service_account_dir is None and loaded.source == "kubeconfig"

    info = handlers.login()
    assert info.server == "https://127.0.0.1:6443"
    assert info.token == "kube-token"
    assert info.ca_path is not None and Path(info.ca_path).read_bytes() == b"CA"


def test_a_kubeconfig_with_a_client_certificate_gives_kopf_the_certificate_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SERVICE_ACCOUNT_DIR_ENV, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path, {
        "client-certificate-data": base64.b64encode(b"CERT").decode(),
        "client-key-data": base64.b64encode(b"KEY").decode(),
    })))
    info = handlers.login()
    assert info.token is None and info.scheme is None
    assert info.certificate_path is not None and info.private_key_path is not None
    assert Path(info.certificate_path).read_bytes() == b"CERT"
    assert Path(info.private_key_path).read_bytes() == b"KEY"


def write_kubeconfig(folder: Path, user: dict[str, str]) -> Path:
    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {
            "server": "https://127.0.0.1:6443",
            "certificate-authority-data": base64.b64encode(b"CA").decode()}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
    }))
    return path
