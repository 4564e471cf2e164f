"""A small typed, asynchronous Kubernetes API client for the operator's own calls.

kopf watches the resources; everything the operator *does* (create Jobs, patch status,
write ledger ConfigMaps, post Events) goes through this client. It speaks plain JSON
dicts over aiohttp, so no generated model classes are built for 300 Jobs a minute, and it
counts every request by verb and resource, which is how the scale benchmark measures
API calls per trial.

Credentials (:func:`load_configuration`, shared with kopf's login handler so the watches
and the operator's own calls always authenticate alike) come from the ``kubernetes``
package's loaders, in this order:

1. The pod's service account: ``token`` and ``ca.crt`` in the folder named by
   ``NAS_BOHB_SERVICEACCOUNT_DIR`` when that variable is set, else in the standard
   ``/var/run/secrets/kubernetes.io/serviceaccount``, with the API server from
   ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``. The token is read from the
   file again every minute, so a rotated (bound) token is picked up.
2. ``KUBECONFIG`` or ``~/.kube/config`` (token, client certificate or basic auth).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

#: Statuses after which the same request may succeed later.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

JsonDict = dict[str, Any]


class ApiError(Exception):
    """A failed API request: ``status`` is the HTTP status (0 when no answer came)."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Whether trying again later may succeed (throttling, server trouble, no answer)."""
        return self.status == 0 or self.status in TRANSIENT_STATUS

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: the object exists already, or our resourceVersion is stale."""
        return self.status == 409


#: Where a kubelet mounts a pod's service-account ``token``, ``ca.crt`` and ``namespace``.
STANDARD_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Names another folder with the same files (the test cluster's simulated nodes, which run
#: a pod's command as a local process, put them there).
SERVICE_ACCOUNT_DIR_ENV = "NAS_BOHB_SERVICEACCOUNT_DIR"


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    host: str
    ssl_context: ssl.SSLContext | bool
    headers_hook: Any  # Callable[[], dict[str, str]]: fresh auth headers per request.
    #: Where they came from, for the log: the service-account folder, or "kubeconfig".
    source: str = ""


@dataclass(frozen=True)
class ApiConfiguration:
    """A loaded ``kubernetes.client.Configuration`` and where it came from."""

    config: Any  # kubernetes.client.Configuration (the package has no type hints)
    #: The service-account folder for in-cluster credentials, else ``None``.
    service_account_dir: Path | None

    @property
    def source(self) -> str:
        if self.service_account_dir is None:
            return "kubeconfig"
        return f"the service account in {self.service_account_dir}"

    @property
    def namespace(self) -> str | None:
        """The pod's namespace (in-cluster only), for kopf's events of cluster objects."""
        if self.service_account_dir is None:
            return None
        try:
            return (self.service_account_dir / "namespace").read_text().strip() or None
        except OSError:
            return None


def service_account_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$NAS_BOHB_SERVICEACCOUNT_DIR``, or the standard service-account folder."""
    env = os.environ if environ is None else environ
    return Path(env.get(SERVICE_ACCOUNT_DIR_ENV) or STANDARD_SERVICE_ACCOUNT_DIR)


def load_configuration(context: str | None = None) -> ApiConfiguration:
    """In-cluster credentials when the service-account folder has them, else the kubeconfig.

    In-cluster, the token is re-read from its file once a minute (a kubelet rotates bound
    tokens) and the CA is the folder's ``ca.crt``.
    """
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.config.incluster_config import InClusterConfigLoader

    cfg = k8s_client.Configuration()
    folder = service_account_dir()
    loader = InClusterConfigLoader(token_filename=str(folder / "token"),
                                   cert_filename=str(folder / "ca.crt"))
    try:
        loader.load_and_set(cfg)
        return ApiConfiguration(cfg, folder)
    except k8s_config.ConfigException as error:
        logger.debug("No in-cluster credentials in %s (%s); using the kubeconfig.", folder,
                     error)
    # $KUBECONFIG as it is now (the package reads it once, at import).
    k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                context=context, client_configuration=cfg)
    return ApiConfiguration(cfg, None)


def authorization_of(cfg: Any) -> str | None:
    """The ``Authorization`` header value of a loaded configuration (a fresh token)."""
    token: str | None = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
    if token:
        return token
    if cfg.username and cfg.password:
        return str(cfg.get_basic_auth_token())
    return None


def load_credentials(context: str | None = None) -> Credentials:
    """Credentials from :func:`load_configuration`, for :class:`KubeClient`."""
    loaded = load_configuration(context)
    cfg = loaded.config

    ssl_context: ssl.SSLContext | bool
    if cfg.verify_ssl:
        ssl_context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            ssl_context.load_cert_chain(cfg.cert_file, cfg.key_file)
    else:
        ssl_context = False

    def headers() -> dict[str, str]:
        value = authorization_of(cfg)
        return {"Authorization": value} if value else {}

    return Credentials(host=cfg.host.rstrip("/"), ssl_context=ssl_context, headers_hook=headers,
                       source=loaded.source)


def collection_path(api_version: str, plural: str, namespace: str | None = None) -> str:
    """``/api/v1/namespaces/ns/configmaps`` or ``/apis/batch/v1/namespaces/ns/jobs``."""
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is None:
        return f"{root}/{plural}"
    return f"{root}/namespaces/{urllib.parse.quote(namespace, safe='')}/{plural}"


def object_path(api_version: str, plural: str, namespace: str | None, name: str,
                subresource: str | None = None) -> str:
    path = f"{collection_path(api_version, plural, namespace)}/{urllib.parse.quote(name, safe='')}"
    return f"{path}/{subresource}" if subresource else path


class KubeClient:
    """Asynchronous JSON requests against one API server, counted by verb and resource."""

    def __init__(self, credentials: Credentials, *, concurrency: int = 32,
                 timeout_seconds: float = 65.0) -> None:
        self._credentials = credentials
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        #: Requests sent by ``"VERB resource"``: ``"POST jobs"``, ``"PATCH jointsearches/status"``.
        self.calls: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_environment(cls, context: str | None = None) -> KubeClient:
        return cls(load_credentials(context))

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._concurrency,
                                             ssl=self._credentials.ssl_context)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None,
                      content_type: str = "application/json") -> JsonDict:
        """One request; the decoded JSON answer, or :class:`ApiError`."""
        self.calls[f"{method} {_resource_of(path)}"] += 1
        headers = {"Accept": "application/json", **self._credentials.headers_hook()}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body, allow_nan=False, separators=(",", ":"))
        url = self._credentials.host + path
        try:
            async with self._session_now().request(method, url, data=data, params=params,
                                                   headers=headers) as response:
                text = await response.text()
                if response.status >= 400:
                    raise ApiError(response.status, method, path, _message_of(text))
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise ApiError(0, method, path, f"no answer: {error!r}") from error

    # -- conveniences ----------------------------------------------------------------------

    async def get(self, path: str) -> JsonDict:
        return await self.request("GET", path)

    async def get_or_none(self, path: str) -> JsonDict | None:
        try:
            return await self.get(path)
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def list(self, path: str, label_selector: str | None = None) -> list[JsonDict]:
        """Every item of a collection, following ``continue`` tokens."""
        items: list[JsonDict] = []
        params: dict[str, str] = {"limit": "500"}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = await self.request("GET", path, params=params)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = token

    async def create(self, path: str, body: Mapping[str, Any]) -> JsonDict:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: Mapping[str, Any]) -> JsonDict:
        return await self.request("PUT", path, body=body)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JsonDict:
        return await self.request("PATCH", path, body=patch,
                                  content_type="application/merge-patch+json")

    async def delete(self, path: str, *, propagation: str = "Background") -> bool:
        """Delete; ``False`` when it was already gone."""
        try:
            await self.request("DELETE", path, body={"propagationPolicy": propagation})
            return True
        except ApiError as error:
            if error.not_found:
                return False
            raise


def _resource_of(path: str) -> str:
    """``jobs`` or ``jointsearches/status`` from an API path, for the call counter."""
    parts = path.split("?")[0].strip("/").split("/")
    # /api/v1/... or /apis/group/version/...; then optional namespaces/ns; then plural[/name[/sub]]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if len(rest) >= 2 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return "namespaces"
    return f"{rest[0]}/{rest[2]}" if len(rest) >= 3 else rest[0]


def _message_of(text: str) -> str:
    try:
        decoded = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(decoded, dict) and "message" in decoded:
        return str(decoded["message"])[:500]
    return text[:300]
