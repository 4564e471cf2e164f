"""``python -m controller.kube``: run the operator (kopf, standalone, no peering objects).

Examples::

    python -m controller.kube --all-namespaces            # the Deployment's command
    python -m controller.kube --namespace team-a --namespace team-b
    KUBECONFIG=... python -m controller.kube -n default --verbose

Options may also come from the environment: ``NAS_BOHB_WATCH_NAMESPACES`` (comma
separated; empty means all), ``NAS_BOHB_METRICS_PORT``, ``NAS_BOHB_DEFAULTS`` (a YAML
file with default ``trialTemplate`` and ``dataset`` fields) and ``NAS_BOHB_LIVENESS``.

Credentials (for kopf's watches and the operator's own calls alike): the pod's service
account, read from the folder named by ``NAS_BOHB_SERVICEACCOUNT_DIR`` (its ``token``,
``ca.crt`` and ``namespace``; default ``/var/run/secrets/kubernetes.io/serviceaccount``)
with the API server from ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``; else
``KUBECONFIG`` or ``~/.kube/config``. See :mod:`controller.kube.client`.

.. note::
   Run one replica. The operator runs kopf in standalone mode: two replicas would both
   act on every search. Their ledger writes are guarded by resourceVersions, so one of
   them would keep failing and rebuilding rather than corrupting a search, but nothing
   elects a leader.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m controller.kube",
                                     description="Run the nas-bohb JointSearch operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=None,
                       help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default)")
    parser.add_argument("--metrics-port", type=int,
                        default=int(env["NAS_BOHB_METRICS_PORT"])
                        if env.get("NAS_BOHB_METRICS_PORT") else None,
                        help="serve Prometheus metrics on this port (default: off)")
    parser.add_argument("--liveness", default=env.get("NAS_BOHB_LIVENESS"),
                        help="kopf's liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--defaults", default=env.get("NAS_BOHB_DEFAULTS"),
                        help="YAML file with default trialTemplate and dataset fields")
    parser.add_argument("--resync-seconds", type=float, default=30.0,
                        help="look at every search at least this often (default 30)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    if args.namespace is None and not args.all_namespaces:
        listed = [n.strip() for n in env.get("NAS_BOHB_WATCH_NAMESPACES", "").split(",")]
        args.namespace = [n for n in listed if n] or None
    return args


def load_defaults(path: str | None) -> dict[str, Any] | None:
    """The defaults document, or ``None``; an unreadable file is a start-up error."""
    if not path:
        return None
    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping with trialTemplate and/or dataset")
    unknown = set(document) - {"trialTemplate", "dataset"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; expected "
                         "trialTemplate and/or dataset")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # kopf narrates every handler call at INFO; keep its own warnings and errors.
        logging.getLogger("kopf").setLevel(logging.WARNING)
    try:
        defaults = load_defaults(args.defaults)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"error: --defaults: {error}", file=sys.stderr)
        return 2

    import kopf

    from controller.kube import handlers
    from controller.kube.runner import RunnerSettings

    handlers.configure(RunnerSettings(defaults=defaults, resync_seconds=args.resync_seconds),
                       args.metrics_port)
    namespaces = args.namespace or []
    logger.info("Operator starting; watching %s.",
                ", ".join(namespaces) if namespaces else "all namespaces")
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
