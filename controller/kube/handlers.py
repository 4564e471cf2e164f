"""kopf wiring: watch events in, one :class:`~controller.kube.runner.SearchRunner` per search.

The operator keeps no state in kopf: it registers only event handlers (no finalizers, no
annotations, no ``status.kopf``), so deleting a search never waits for the operator and
the resource's status holds nothing but the search. Every ``JointSearch`` event hands the
newest body to the search's runner (started on first sight, also after an operator
restart, when kopf lists the existing resources); every event of a Job the operator
labelled wakes the runner of the search that owns it. The runner does the rest.

Configuration comes from :func:`configure` (called by ``python -m controller.kube``
before kopf starts), so the handlers stay importable without side effects. kopf's own
connection (its watches) logs in through :func:`login`, from the same source as the
operator's client (:func:`controller.kube.client.load_configuration`), so both always
authenticate alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from controller.kube import GROUP, LABEL_MANAGED_BY, LABEL_SEARCH, MANAGED_BY, PLURAL, VERSION
from controller.kube.client import KubeClient, load_configuration
from controller.kube.runner import RunnerSettings, SearchRunner

logger = logging.getLogger(__name__)


class _NoDiffBase(kopf.DiffBaseStorage):
    """No change detection: kopf would deep-copy every event's body to compute a diff.

    The handlers here are event handlers only, so nothing ever compares essences; with a
    1,000-trial status (about 200 KB) the copy would cost more than all the rest.
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


@dataclass
class OperatorState:
    """What the handlers share: settings, the API client and the runners by search."""

    settings: RunnerSettings = field(default_factory=RunnerSettings)
    metrics_port: int | None = None
    client: KubeClient | None = None
    runners: dict[tuple[str, str], SearchRunner] = field(default_factory=dict)


STATE = OperatorState()


def configure(settings: RunnerSettings, metrics_port: int | None) -> None:
    """Set the operator-wide options before kopf runs the handlers."""
    STATE.settings = settings
    STATE.metrics_port = metrics_port


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials: the service account (``NAS_BOHB_SERVICEACCOUNT_DIR`` or the
    standard folder) or the kubeconfig, exactly as the operator's own client loads them.

    kopf calls this again after an HTTP 401, so a rotated token is read from its file anew.
    """
    try:
        loaded = load_configuration()
    except Exception as error:  # the kubernetes loaders raise several kinds
        raise kopf.PermanentError(f"No usable Kubernetes credentials: {error}") from error
    return connection_info(loaded.config, namespace=loaded.namespace)


def connection_info(cfg: Any, *, namespace: str | None = None) -> kopf.ConnectionInfo:
    """kopf's view of a loaded ``kubernetes.client.Configuration``."""
    header: str | None = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
    scheme, _, token = (header or "").strip().rpartition(" ")
    return kopf.ConnectionInfo(
        server=str(cfg.host).rstrip("/"),
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
        default_namespace=namespace,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Failures of our own handlers are logged; trial and search Events are posted by the
    # runners themselves, so kopf only posts warnings about its own trouble.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.batching.batch_window = 0.05
    # Namespaces are exact names (no globs): never list or watch Namespace objects.
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = _NoDiffBase()
    STATE.client = KubeClient.from_environment()
    logger.info("The operator talks to %s with %s.", STATE.client.credentials.host,
                STATE.client.credentials.source)
    if STATE.metrics_port:
        try:
            from controller import metrics

            metrics.start_http_server(STATE.metrics_port)
            logger.info("Metrics are served on port %d.", STATE.metrics_port)
        except (ImportError, OSError) as error:
            logger.warning("Metrics are not served: %s.", error)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    runners = list(STATE.runners.values())
    STATE.runners.clear()
    await asyncio.gather(*(r.stop() for r in runners), return_exceptions=True)
    if STATE.client is not None:
        calls = STATE.client.calls
        logger.info("Operator stopping; API calls made: %d in total (%s).", sum(calls.values()),
                    ", ".join(f"{k}: {v}" for k, v in sorted(calls.items())))
        await STATE.client.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def search_event(event: Mapping[str, Any], **_: Any) -> None:
    """A ``JointSearch`` appeared, changed or was deleted."""
    body = event.get("object") or {}
    meta = body.get("metadata") or {}
    key = (meta.get("namespace", ""), meta.get("name", ""))
    runner = STATE.runners.get(key)
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        if runner is not None and runner.uid == meta.get("uid"):
            STATE.runners.pop(key, None)
            await runner.stop()
            if runner.metrics is not None:
                runner.metrics.forget()
            logger.info("Search %s/%s was deleted; its runner stopped.", *key)
        return
    if runner is not None and runner.uid != meta.get("uid"):
        # Deleted and created again under the same name while we were not looking.
        await runner.stop()
        runner = None
    if runner is None:
        assert STATE.client is not None, "startup() has not run"
        runner = SearchRunner(STATE.client, body, STATE.settings)
        STATE.runners[key] = runner
        runner.start()
        logger.info("Search %s/%s: runner started.", *key)
    else:
        runner.observe(body)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY,
                                              LABEL_SEARCH: kopf.PRESENT})
async def job_event(event: Mapping[str, Any], **_: Any) -> None:
    """A trial Job changed: wake the runner of the search that owns it."""
    job = event.get("object") or {}
    meta = job.get("metadata") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "JointSearch":
            runner = STATE.runners.get((meta.get("namespace", ""), owner.get("name", "")))
            if runner is not None:
                runner.observe_job(event.get("type"), job)
            return
