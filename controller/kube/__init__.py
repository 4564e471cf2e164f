"""The Kubernetes operator: a ``JointSearch`` resource becomes a BOHB search run as Jobs.

One search engine (:mod:`controller.engine`) per resource lives in the operator's memory;
its ledger lives in the cluster (ConfigMaps owned by the resource, :mod:`.ledger`), so a
restarted operator rebuilds every search from it, adopts the Jobs that still run and
never runs a trial twice. Each trial is one Job (:mod:`.template`); trainer pods report
into the resource's status (:mod:`trainer.report`); :mod:`.runner` reconciles the three.
:mod:`.handlers` wires that into kopf, ``python -m controller.kube`` runs it, and
:mod:`.export` writes a finished search in hpbandster's file format.
"""

from __future__ import annotations

GROUP = "nas-bohb.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "JointSearch"
PLURAL = "jointsearches"

#: The labels every object the operator creates carries (selectors use the first three).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
#: Project labels: which search, trial, configuration, budget and attempt a Job runs.
LABEL_SEARCH = f"{GROUP}/search"
LABEL_TRIAL = f"{GROUP}/trial"
LABEL_CONFIG = f"{GROUP}/config"
LABEL_BUDGET = f"{GROUP}/budget"
LABEL_ATTEMPT = f"{GROUP}/attempt"
MANAGED_BY = "nas-bohb-operator"
