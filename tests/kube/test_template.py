"""Trial Jobs and trainer access objects built from a JointSearch (pure, no cluster)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller import spec as spec_mod
from controller.kube import template as tpl


def make_owner(name: str = "cifar", namespace: str = "team-a") -> dict[str, Any]:
    return {"apiVersion": "nas-bohb.io/v1alpha1", "kind": "JointSearch",
            "metadata": {"name": name, "namespace": namespace, "uid": "uid-1234"}}


def make_search(**overrides: Any) -> spec_mod.SearchSpec:
    body: dict[str, Any] = {
        "budgets": {"min": 400, "max": 10800, "eta": 3},
        "maxIterations": 1,
        "dataset": {"url": "https://example.org/cifar.tgz",
                    "md5": "c58f30108f718f92721af3b95e74349a"},
        "trainer": {"device": "cuda"},
        "trialTemplate": {"image": "nas-bohb/trainer:0.1.0"},
    }
    body.update(overrides)
    return spec_mod.load_spec(body)


def make_trial(**overrides: Any) -> tpl.TrialJob:
    values: dict[str, Any] = {"trial_id": "3-0-7-b2", "config_id": "3-0-7", "budget": 3600.0,
                              "attempt": 1, "seed": 42, "config": {"learning_rate": 0.1}}
    values.update(overrides)
    return tpl.TrialJob(**values)


def build(search: spec_mod.SearchSpec | None = None, **trial: Any) -> dict[str, Any]:
    search = search or make_search()
    return tpl.build_job(make_owner(), make_trial(**trial), search,
                         tpl.parse_template(search.trial_template))


class TestJob:
    def test_job_is_owned_by_the_search_and_labelled_by_search_trial_and_budget(self) -> None:
        job = build()
        meta = job["metadata"]
        assert meta["ownerReferences"][0]["uid"] == "uid-1234"
        assert meta["ownerReferences"][0]["controller"] is True
        labels = meta["labels"]
        assert labels["nas-bohb.io/search"] == "cifar"
        assert labels["nas-bohb.io/trial"] == "3-0-7-b2"
        assert labels["nas-bohb.io/budget"] == "3600"
        assert labels["app.kubernetes.io/instance"] == "cifar"
        assert labels["app.kubernetes.io/component"] == "trial"
        assert job["spec"]["template"]["metadata"]["labels"]["nas-bohb.io/trial"] == "3-0-7-b2"

    def test_pod_never_restarts_and_job_does_not_retry_by_default(self) -> None:
        job = build()
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        assert job["spec"]["backoffLimit"] == 0

    def test_deadline_is_budget_times_overrun_factor_plus_startup_allowance(self) -> None:
        search = make_search(trainer={"overrunFactor": 1.5, "startupAllowanceSeconds": 300})
        assert build(search, budget=400.0)["spec"]["activeDeadlineSeconds"] == 900

    def test_one_gpu_is_requested_unless_the_template_says_otherwise(self) -> None:
        container = build()["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
        cpu = make_search(trialTemplate={"image": "x:1", "resources": {"limits": {"cpu": "2"}}})
        assert build(cpu)["spec"]["template"]["spec"]["containers"][0]["resources"] == {
            "limits": {"cpu": "2"}}

    def test_trainer_gets_its_command_line_and_reporting_environment(self) -> None:
        pod = build()["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = container["args"]
        assert container["command"] == ["python", "-m", "trainer"]
        assert json.loads(args[args.index("--config") + 1]) == {"learning_rate": 0.1}
        assert args[args.index("--budget") + 1] == "3600"
        assert args[args.index("--data-md5") + 1] == "c58f30108f718f92721af3b95e74349a"
        assert args[args.index("--device") + 1] == "cuda"
        assert args[args.index("--report") + 1] == "kube"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NAS_BOHB_TRIAL_ID"] == "3-0-7-b2"
        assert env["NAS_BOHB_SEARCH_NAME"] == "cifar"
        assert env["NAS_BOHB_TRIAL_ATTEMPT"] == "1"
        assert pod["serviceAccountName"] == "cifar-trainer"

    def test_trainer_writes_its_termination_message_where_the_kubelet_reads_it(self) -> None:
        container = build()["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NAS_BOHB_TERMINATION_LOG"] == container["terminationMessagePath"]
        assert container["terminationMessagePath"] == "/dev/termination-log"
        # The file first; the log's last lines only when it is empty and the trainer failed.
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"

    def test_later_attempts_get_their_own_job_name(self) -> None:
        assert build(attempt=1)["metadata"]["name"] == "cifar-3-0-7-b2"
        assert build(attempt=2)["metadata"]["name"] == "cifar-3-0-7-b2-a2"

    def test_long_search_names_still_give_valid_job_names(self) -> None:
        name = tpl.job_name("a" * 80, "baseline-" + "b" * 40, 3)
        assert len(name) <= 63
        assert name.endswith("baseline-" + "b" * 40 + "-a3")
        assert name != tpl.job_name("a" * 79 + "c", "baseline-" + "b" * 40, 3)

    def test_a_volume_at_the_cache_dir_replaces_the_scratch_cache(self) -> None:
        search = make_search(trialTemplate={
            "image": "x:1", "cacheDir": "/cache",
            "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "c"}}],
            "volumeMounts": [{"name": "shared", "mountPath": "/cache"}]})
        pod = build(search)["spec"]["template"]["spec"]
        assert [v["name"] for v in pod["volumes"]] == ["shared"]
        scratch = build()["spec"]["template"]["spec"]
        assert scratch["volumes"] == [{"name": "nas-bohb-cache", "emptyDir": {}}]


class TestTemplateErrors:
    @pytest.mark.parametrize(("template", "field"), [
        pytest.param({}, "spec.trialTemplate.image", id="no-image"),
        pytest.param({"image": "x", "imagePullPolicy": "Sometimes"},
                     "spec.trialTemplate.imagePullPolicy", id="pull-policy"),
        pytest.param({"image": "x", "env": [{"name": "NAS_BOHB_TRIAL_ID", "value": "1"}]},
                     "spec.trialTemplate.env[0].name", id="reserved-env"),
        pytest.param({"image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                     "spec.trialTemplate.volumeMounts[0].name", id="mount-without-volume"),
        pytest.param({"image": "x", "cacheDir": "relative"}, "spec.trialTemplate.cacheDir",
                     id="relative-cache"),
        pytest.param({"image": "x", "colour": "blue"}, "spec.trialTemplate.colour",
                     id="unknown-field"),
    ])
    def test_bad_template_is_refused_naming_the_field(self, template: dict[str, Any],
                                                      field: str) -> None:
        with pytest.raises(spec_mod.SpecError) as caught:
            tpl.parse_template(template)
        assert caught.value.field == field

    def test_search_without_dataset_cannot_run_in_a_cluster(self) -> None:
        with pytest.raises(spec_mod.SpecError) as caught:
            tpl.data_argument(spec_mod.DatasetSpec())
        assert caught.value.field == "spec.dataset"


class TestDefaults:
    def test_search_fields_win_over_operator_defaults(self) -> None:
        defaults = {"trialTemplate": {"image": "default:1", "nodeSelector": {"gpu": "a100"}},
                    "dataset": {"url": "https://mirror/cifar.tgz"}}
        merged = tpl.merge_defaults({"trialTemplate": {"image": "mine:2"},
                                     "dataset": {"path": "/data/c.tgz"}}, defaults)
        assert merged["trialTemplate"] == {"image": "mine:2", "nodeSelector": {"gpu": "a100"}}
        assert merged["dataset"] == {"path": "/data/c.tgz"}

    def test_defaults_fill_a_search_that_names_no_dataset(self) -> None:
        merged = tpl.merge_defaults({}, {"dataset": {"url": "https://mirror/cifar.tgz"}})
        assert merged["dataset"] == {"url": "https://mirror/cifar.tgz"}


def test_trainer_role_allows_only_reading_and_patching_this_search_status() -> None:
    objects = {plural: obj for _, plural, obj in tpl.trainer_rbac(make_owner())}
    assert objects["roles"]["rules"] == [{
        "apiGroups": ["nas-bohb.io"], "resources": ["jointsearches/status"],
        "resourceNames": ["cifar"], "verbs": ["get", "patch"]}]
    assert objects["rolebindings"]["subjects"][0]["name"] == "cifar-trainer"
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"
               for o in objects.values())
