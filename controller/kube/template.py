"""From a ``JointSearch`` and a trial to the Kubernetes objects that run it.

``spec.trialTemplate`` says how a trial's pod looks (image, command, resources with one
``nvidia.com/gpu`` by default, node selector, tolerations, env, volumes); this module
checks it (a :class:`controller.spec.SpecError` naming the field, so a bad template is a
``Failed``/``Invalid`` search rather than a crash loop) and builds, for each trial, one Job:

* owned by the search (deleted with it) and labelled by search, trial, configuration,
  budget and attempt, plus the ``app.kubernetes.io`` set;
* ``restartPolicy: Never`` and ``backoffLimit: 0`` by default. Kubernetes 1.20 cannot
  tell an evicted pod from a crashed trainer (``podFailurePolicy`` came later), so a pod
  retry would re-run a configuration that crashed. The operator classifies failures
  itself and retries only infrastructure failures, through the engine's ``release``
  (a new Job, ``attempt + 1``, at most three attempts);
* ``activeDeadlineSeconds`` of ``budget x trainer.overrunFactor +
  trainer.startupAllowanceSeconds``, so a hung trainer cannot hold a GPU forever;
* the trainer's command line (``docs/architecture.md``) with ``--report kube`` and the
  environment :mod:`trainer.report` reads;
* the termination message at :data:`TERMINATION_LOG`, where the trainer also writes its
  result: the operator's fallback when the status write did not get through.

It also builds the per-search ServiceAccount, Role and RoleBinding that let a trial pod
patch the status of its own search and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller import spec as spec_mod
from controller.kube import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_ATTEMPT,
    LABEL_BUDGET,
    LABEL_COMPONENT,
    LABEL_CONFIG,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_SEARCH,
    LABEL_TRIAL,
    MANAGED_BY,
    PLURAL,
)

SpecError = spec_mod.SpecError

DEFAULT_COMMAND = ("python", "-m", "trainer")
DEFAULT_RESOURCES: Mapping[str, Any] = {"limits": {"nvidia.com/gpu": 1}}
DEFAULT_CACHE_DIR = "/var/cache/nas-bohb"
CACHE_VOLUME = "nas-bohb-cache"
CONTAINER = "trainer"
#: The trainer container's terminationMessagePath (Kubernetes' default, set explicitly):
#: the trainer writes its result there too (``NAS_BOHB_TERMINATION_LOG``), and the
#: operator reads it from the pod when the status never got the result.
TERMINATION_LOG = "/dev/termination-log"
_MAX_NAME = 63  # Job names end up in the job-name label of their pods: at most 63 characters.


@dataclass(frozen=True)
class TrialTemplate:
    """``spec.trialTemplate``, checked, with defaults filled in."""

    image: str
    command: tuple[str, ...] = DEFAULT_COMMAND
    image_pull_policy: str | None = None
    resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    affinity: Mapping[str, Any] | None = None
    env: Sequence[Mapping[str, Any]] = ()
    volumes: Sequence[Mapping[str, Any]] = ()
    volume_mounts: Sequence[Mapping[str, Any]] = ()
    priority_class_name: str | None = None
    cache_dir: str = DEFAULT_CACHE_DIR
    keep_finished_jobs: bool = False
    backoff_limit: int = 0
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)


_TEMPLATE_FIELDS = (
    "image", "command", "imagePullPolicy", "resources", "nodeSelector", "tolerations",
    "affinity", "env", "volumes", "volumeMounts", "priorityClassName", "cacheDir",
    "keepFinishedJobs", "backoffLimit", "podLabels", "podAnnotations",
)


def parse_template(raw: Mapping[str, Any] | None, path: str = "spec.trialTemplate"
                   ) -> TrialTemplate:
    """Check ``spec.trialTemplate``; raise :class:`SpecError` naming the first bad field."""
    if raw is None:
        raise SpecError(path, "is required for a JointSearch (at least an image)")
    if not isinstance(raw, Mapping):
        raise SpecError(path, "expected a mapping")
    for key in raw:
        if key not in _TEMPLATE_FIELDS:
            raise SpecError(f"{path}.{key}",
                            f"unknown field; known fields here: {', '.join(_TEMPLATE_FIELDS)}")
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        raise SpecError(f"{path}.image", "is required: the trainer's container image")
    command = raw.get("command", list(DEFAULT_COMMAND))
    if not _str_list(command) or not command:
        raise SpecError(f"{path}.command", "expected a non-empty list of strings")
    policy = raw.get("imagePullPolicy")
    if policy is not None and policy not in ("Always", "IfNotPresent", "Never"):
        raise SpecError(f"{path}.imagePullPolicy",
                        f"expected Always, IfNotPresent or Never, got {policy!r}")
    resources = raw.get("resources", DEFAULT_RESOURCES)
    _check_resources(resources, f"{path}.resources")
    node_selector = raw.get("nodeSelector", {})
    if not isinstance(node_selector, Mapping) or not all(
            isinstance(v, str) for v in node_selector.values()):
        raise SpecError(f"{path}.nodeSelector", "expected a mapping of strings to strings")
    lists = {}
    for key in ("tolerations", "env", "volumes", "volumeMounts"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise SpecError(f"{path}.{key}", "expected a list of mappings")
        lists[key] = value
    for i, item in enumerate(lists["env"]):
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise SpecError(f"{path}.env[{i}].name", "is required")
        if item["name"].startswith("NAS_BOHB_"):
            raise SpecError(f"{path}.env[{i}].name",
                            f"{item['name']!r}: NAS_BOHB_* variables are set by the operator")
    for key in ("volumes", "volumeMounts"):
        for i, item in enumerate(lists[key]):
            if not isinstance(item.get("name"), str) or not item["name"]:
                raise SpecError(f"{path}.{key}[{i}].name", "is required")
    volume_names = {v["name"] for v in lists["volumes"]} | {CACHE_VOLUME}
    for i, mount in enumerate(lists["volumeMounts"]):
        if mount["name"] not in volume_names:
            raise SpecError(f"{path}.volumeMounts[{i}].name",
                            f"{mount['name']!r} is not one of the template's volumes")
        if not isinstance(mount.get("mountPath"), str) or not mount["mountPath"]:
            raise SpecError(f"{path}.volumeMounts[{i}].mountPath", "is required")
    affinity = raw.get("affinity")
    if affinity is not None and not isinstance(affinity, Mapping):
        raise SpecError(f"{path}.affinity", "expected a mapping")
    priority = raw.get("priorityClassName")
    if priority is not None and not isinstance(priority, str):
        raise SpecError(f"{path}.priorityClassName", "expected a string")
    cache_dir = raw.get("cacheDir", DEFAULT_CACHE_DIR)
    if not isinstance(cache_dir, str) or not cache_dir.startswith("/"):
        raise SpecError(f"{path}.cacheDir", f"expected an absolute path, got {cache_dir!r}")
    keep = raw.get("keepFinishedJobs", False)
    if not isinstance(keep, bool):
        raise SpecError(f"{path}.keepFinishedJobs", f"expected true or false, got {keep!r}")
    backoff = raw.get("backoffLimit", 0)
    if isinstance(backoff, bool) or not isinstance(backoff, int) or not 0 <= backoff <= 10:
        raise SpecError(f"{path}.backoffLimit", f"expected an integer 0..10, got {backoff!r}")
    labels: dict[str, dict[str, str]] = {}
    for key in ("podLabels", "podAnnotations"):
        value = raw.get(key, {})
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise SpecError(f"{path}.{key}", "expected a mapping of strings to strings")
        labels[key] = dict(value)
    return TrialTemplate(
        image=image.strip(),
        command=tuple(command),
        image_pull_policy=policy,
        resources=resources,
        node_selector=dict(node_selector),
        tolerations=tuple(lists["tolerations"]),
        affinity=affinity,
        env=tuple(lists["env"]),
        volumes=tuple(lists["volumes"]),
        volume_mounts=tuple(lists["volumeMounts"]),
        priority_class_name=priority,
        cache_dir=cache_dir,
        keep_finished_jobs=keep,
        backoff_limit=backoff,
        pod_labels=labels["podLabels"],
        pod_annotations=labels["podAnnotations"],
    )


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _check_resources(value: object, path: str) -> None:
    if not isinstance(value, Mapping):
        raise SpecError(path, "expected a mapping with limits and/or requests")
    for key, amounts in value.items():
        if key not in ("limits", "requests"):
            raise SpecError(f"{path}.{key}", "unknown field; known fields here: limits, requests")
        if not isinstance(amounts, Mapping):
            raise SpecError(f"{path}.{key}", "expected a mapping of resource names to amounts")
        for name, amount in amounts.items():
            if isinstance(amount, bool) or not isinstance(amount, (int, float, str)):
                raise SpecError(f"{path}.{key}.{name}", f"expected a quantity, got {amount!r}")


def merge_defaults(spec: Mapping[str, Any], defaults: Mapping[str, Any] | None
                   ) -> dict[str, Any]:
    """The search's bare spec with the operator's defaults underneath it.

    ``defaults`` (the Helm chart's ``NAS_BOHB_DEFAULTS`` file) may hold ``trialTemplate``
    and ``dataset``. A template field the search sets wins over the default of that field;
    the dataset is taken whole from the search when it names a ``url`` or a ``path``.
    """
    merged = dict(spec)
    if not defaults:
        return merged
    default_template = defaults.get("trialTemplate")
    if isinstance(default_template, Mapping):
        own = spec.get("trialTemplate")
        merged["trialTemplate"] = {**default_template, **(own if isinstance(own, Mapping)
                                                           else {})}
    default_dataset = defaults.get("dataset")
    own_dataset = spec.get("dataset")
    has_own = isinstance(own_dataset, Mapping) and (own_dataset.get("url")
                                                    or own_dataset.get("path"))
    if isinstance(default_dataset, Mapping) and not has_own:
        merged["dataset"] = dict(default_dataset)
    return merged


def data_argument(dataset: spec_mod.DatasetSpec) -> str:
    """What ``--data`` gets in a pod: the dataset's path (a mounted volume) or its URL."""
    if dataset.path:
        return dataset.path
    if dataset.url:
        return dataset.url
    raise SpecError("spec.dataset", "a JointSearch needs dataset.url (with md5) or "
                    "dataset.path (an archive on a volume mounted by trialTemplate)")


# --- names and labels ---------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:5]


def label_value(text: str) -> str:
    """``text`` as a label value: itself when short enough, else truncated plus a hash."""
    if len(text) <= _MAX_NAME:
        return text
    return f"{text[:_MAX_NAME - 6].rstrip('-._')}-{_short_hash(text)}"


def job_name(search: str, trial_id: str, attempt: int) -> str:
    """``<search>-<trial>`` (``-a<attempt>`` from the second attempt on), at most 63 chars."""
    tail = f"{trial_id}-a{attempt}" if attempt > 1 else trial_id
    name = f"{search}-{tail}"
    if len(name) <= _MAX_NAME:
        return name
    room = _MAX_NAME - len(tail) - 7
    return f"{search[:max(room, 1)].rstrip('-.')}-{_short_hash(search)}-{tail}"


def trainer_account(search: str) -> str:
    """Name of the ServiceAccount, Role and RoleBinding of a search's trainer pods."""
    name = f"{search}-trainer"
    return name if len(name) <= 253 else f"{search[:240]}-{_short_hash(search)}-trainer"


def search_labels(search: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: "nas-bohb",
        LABEL_INSTANCE: label_value(search),
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "nas-bohb",
        LABEL_SEARCH: label_value(search),
    }


def search_selector(search: str, component: str) -> str:
    """Label selector for one kind of object of one search (name, instance, component)."""
    return (f"{LABEL_NAME}=nas-bohb,{LABEL_INSTANCE}={label_value(search)},"
            f"{LABEL_COMPONENT}={component}")


def owner_reference(search: Mapping[str, Any]) -> dict[str, Any]:
    meta = search["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def budget_text(budget: float) -> str:
    return f"{float(budget):g}"


# --- objects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialJob:
    """What a Job needs to know about its trial (a view of the engine's TrialRequest)."""

    trial_id: str
    config_id: str
    budget: float
    attempt: int
    seed: int
    config: Mapping[str, int | float]


def active_deadline(budget: float, trainer: spec_mod.TrainerSpec) -> int:
    return math.ceil(budget * trainer.overrun_factor + trainer.startup_allowance_seconds)


def progress_interval(parallel: int) -> float:
    """Least seconds between one trainer's progress writes: 30, or more for wide searches.

    Every write rewrites the whole status object, so all trainers together stay under
    about five progress writes per second.
    """
    return max(30.0, parallel / 5.0)


def trainer_args(trial: TrialJob, search: spec_mod.SearchSpec, template: TrialTemplate,
                 namespace: str, name: str) -> list[str]:
    """The trainer's command line after the template's command."""
    args = [
        "--config", json.dumps(dict(trial.config), sort_keys=True, separators=(",", ":")),
        "--budget", budget_text(trial.budget),
        "--data", data_argument(search.dataset),
    ]
    if search.dataset.md5:
        args += ["--data-md5", search.dataset.md5]
    output = f"{template.cache_dir.rstrip('/')}/result-{namespace}-{name}-{trial.trial_id}" \
             f"-a{trial.attempt}.json"
    args += ["--cache-dir", template.cache_dir, "--output", output, "--seed", str(trial.seed)]
    if search.trainer.device != "auto":
        args += ["--device", search.trainer.device]
    if search.trainer.threads:
        args += ["--threads", str(search.trainer.threads)]
    args += ["--report", "kube", *search.trainer.extra_args]
    return args


def build_job(owner: Mapping[str, Any], trial: TrialJob, search: spec_mod.SearchSpec,
              template: TrialTemplate) -> dict[str, Any]:
    """The Job that runs ``trial`` for the ``JointSearch`` ``owner``."""
    namespace = owner["metadata"]["namespace"]
    name = owner["metadata"]["name"]
    labels = {
        **search_labels(name, "trial"),
        LABEL_TRIAL: trial.trial_id,
        LABEL_CONFIG: trial.config_id,
        LABEL_BUDGET: budget_text(trial.budget),
        LABEL_ATTEMPT: str(trial.attempt),
    }
    env = [
        {"name": "NAS_BOHB_SEARCH_NAMESPACE", "value": namespace},
        {"name": "NAS_BOHB_SEARCH_NAME", "value": name},
        {"name": "NAS_BOHB_TRIAL_ID", "value": trial.trial_id},
        {"name": "NAS_BOHB_TRIAL_ATTEMPT", "value": str(trial.attempt)},
        {"name": "NAS_BOHB_CONFIG_ID", "value": trial.config_id},
        {"name": "NAS_BOHB_BUDGET", "value": budget_text(trial.budget)},
        {"name": "NAS_BOHB_REPORT_INTERVAL",
         "value": budget_text(progress_interval(search.parallel_trial_count))},
        {"name": "NAS_BOHB_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *[dict(e) for e in template.env],
    ]
    mounts = [dict(m) for m in template.volume_mounts]
    volumes = [dict(v) for v in template.volumes]
    if not any(m.get("mountPath") == template.cache_dir for m in mounts):
        # A scratch cache per pod; mount a shared volume at cacheDir to download only once.
        mounts.append({"name": CACHE_VOLUME, "mountPath": template.cache_dir})
        if not any(v["name"] == CACHE_VOLUME for v in volumes):
            volumes.append({"name": CACHE_VOLUME, "emptyDir": {}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": template.image,
        "command": list(template.command),
        "args": trainer_args(trial, search, template, namespace, name),
        "env": env,
        "resources": json.loads(json.dumps(template.resources)),
        "volumeMounts": mounts,
        # The trainer writes its result into the termination message as well, for when
        # the status write cannot get through. FallbackToLogsOnError reads that file as
        # File does, and only when it is empty and the trainer failed takes the last lines
        # of its log instead: they become the trial's failure message.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if template.image_pull_policy:
        container["imagePullPolicy"] = template.image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": trainer_account(name),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
    }
    if template.node_selector:
        pod_spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in template.tolerations]
    if template.affinity:
        pod_spec["affinity"] = dict(template.affinity)
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, trial.trial_id, trial.attempt),
            "namespace": namespace,
            "labels": labels,
            "annotations": {f"{GROUP}/config": json.dumps(dict(trial.config), sort_keys=True)},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": template.backoff_limit,
            "activeDeadlineSeconds": active_deadline(trial.budget, search.trainer),
            "template": {
                "metadata": {
                    "labels": {**template.pod_labels, **labels},
                    "annotations": dict(template.pod_annotations),
                },
                "spec": pod_spec,
            },
        },
    }


def trainer_rbac(owner: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(api_version, plural, object)`` for the search's ServiceAccount, Role, RoleBinding.

    The Role covers one object, this search's ``status``: ``patch`` to report, and ``get``
    to read the resourceVersion each report is conditioned on.
    """
    namespace = owner["metadata"]["namespace"]
    name = owner["metadata"]["name"]
    account = trainer_account(name)
    meta = {
        "name": account,
        "namespace": namespace,
        "labels": search_labels(name, "trainer-access"),
        "ownerReferences": [owner_reference(owner)],
    }
    return [
        ("v1", "serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                   "metadata": dict(meta)}),
        ("rbac.authorization.k8s.io/v1", "roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": dict(meta),
            "rules": [{
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [name],
                "verbs": ["get", "patch"],
            }],
        }),
        ("rbac.authorization.k8s.io/v1", "rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": dict(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account,
                          "namespace": namespace}],
        }),
    ]
