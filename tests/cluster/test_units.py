"""Pure logic of the harness, without a cluster: parsing, expansion, the watch's recovery."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import build, simnode

# --- apt sources and versions (build) ---------------------------------------------------------


def test_deb822_sources_become_bookworm_deb_src_lines() -> None:
    text = (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://other.example/node\nSuites: nodistro\nComponents: main\n"
    )

    entries = build._parse_deb822(text)

    assert entries == [
        ("http://mirror.example/debian", "bookworm", "/usr/share/keyrings/k.gpg"),
        ("http://mirror.example/debian", "bookworm-updates", "/usr/share/keyrings/k.gpg"),
        ("http://mirror.example/debian-security", "bookworm-security", ""),
    ]


def test_one_line_sources_keep_their_signed_by_option() -> None:
    text = ("# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian trixie main\n"
            "deb-src http://m.example/debian bookworm main\n")

    assert build._parse_one_line(text) == [("http://m.example/debian", "trixie", "/k.gpg")]


@pytest.mark.parametrize(("debian", "upstream"), [
    pytest.param("1.20.5+really1.20.2-1.1+deb12u1", "1.20.2", id="really"),
    pytest.param("1.20.2-1", "1.20.2", id="plain"),
    pytest.param("1:1.20.2+ds-3", "1.20.2", id="epoch-and-repack"),
])
def test_upstream_version_is_read_from_the_debian_version(debian: str, upstream: str) -> None:
    assert build._upstream_version(debian) == upstream


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("NAS_BOHB_CLUSTER_CACHE", str(tmp_path))

    assert build.cache_root() == tmp_path
    assert build.cached_binaries("0.0.0") is None


# --- pod environment (simnode) ----------------------------------------------------------------


def test_variable_references_expand_like_the_kubelet() -> None:
    env = {"POD": "p-1", "DIR": "/data"}

    assert simnode._expand("$(POD)-$(DIR)/x", env) == "p-1-/data/x"
    assert simnode._expand("$$(POD) $(MISSING)", env) == "$(POD) $(MISSING)"


def test_paths_under_a_mount_are_rewritten_to_the_local_folder() -> None:
    mounts = [("/results/deep", Path("/tmp/b")), ("/results", Path("/tmp/a"))]

    assert simnode._rewrite_path("/results/deep/r.json", mounts) == "/tmp/b/r.json"
    assert simnode._rewrite_path("/results", mounts) == "/tmp/a"
    assert simnode._rewrite_path("/resultsx/r.json", mounts) == "/resultsx/r.json"


@pytest.mark.parametrize(("text", "value"), [
    ("500m", 0.5), ("2", 2.0), ("1Gi", 2.0**30), ("1e3", 1000.0), ("128Mi", 128 * 2.0**20),
])
def test_quantities_parse_to_numbers(text: str, value: float) -> None:
    assert simnode.parse_quantity(text) == value


def test_bad_quantity_names_the_value() -> None:
    with pytest.raises(ValueError, match="'12parsecs'"):
        simnode.parse_quantity("12parsecs")


def test_field_references_read_the_pod() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                        "labels": {"trial": "3"}},
           "spec": {"serviceAccountName": "trainer", "nodeName": "n"}}

    assert simnode._field_value(pod, "metadata.uid") == "u-1"
    assert simnode._field_value(pod, "spec.serviceAccountName") == "trainer"
    assert simnode._field_value(pod, "metadata.labels['trial']") == "3"


def test_resource_reference_rounds_up_by_divisor() -> None:
    container = {"resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}}
    capacity = simnode.NodeCapacity()

    assert simnode._resource_value(container, {"resource": "limits.cpu"}, capacity) == "2"
    assert simnode._resource_value(
        container, {"resource": "limits.memory", "divisor": "1Mi"}, capacity) == "1024"


def test_default_simulate_hook_reads_annotations() -> None:
    pod = {"metadata": {"annotations": {simnode.SIMULATE_SECONDS_ANNOTATION: "2.5",
                                        simnode.SIMULATE_EXIT_CODE_ANNOTATION: "1"}}}

    assert simnode.default_simulate_hook(pod) == (2.5, 1)
    assert simnode.default_simulate_hook({"metadata": {}}) == (1.0, 0)


def test_node_rejects_a_bad_mode_by_name() -> None:
    with pytest.raises(ValueError, match="mode"):
        simnode.SimNode(_ScriptedApi([]), "n", mode="docker")


# --- the pod watch's recovery (simnode) -------------------------------------------------------


class _ScriptedApi(simnode.KubeApi):
    """Answers lists with an empty pod list and plays one scripted stream per watch call."""

    def __init__(self, streams: list[list[dict[str, Any]]]) -> None:
        self.streams = streams
        self.watched_from: list[str] = []
        self.lists = 0

    @property
    def host(self) -> str:
        return "https://127.0.0.1:6443"

    def get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        self.lists += 1
        return {"metadata": {"resourceVersion": str(100 * self.lists)}, "items": []}

    def watch(self, path: str, query: Mapping[str, str],
              *, on_open: Any = None) -> Iterator[dict[str, Any]]:
        self.watched_from.append(query["resourceVersion"])
        if not self.streams:
            time.sleep(0.05)
            return
        yield from self.streams.pop(0)


def _pod_event(kind: str, version: str) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {"uid": "u", "name": "p", "namespace": "ns",
                                                  "resourceVersion": version}}}


def test_watch_lists_again_when_its_resource_version_expired() -> None:
    expired = {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                           "message": "too old resource version"}}
    api = _ScriptedApi([[_pod_event("ADDED", "101"), expired], [_pod_event("MODIFIED", "205")]])
    node = simnode.SimNode(api, "n", mode="simulate")

    thread = threading.Thread(target=node._watch_loop, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while len(api.watched_from) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    node._stop.set()
    thread.join(5)

    # Listed at 100, watched from 100, expired; listed at 200, resumed from 200, then 205.
    assert api.watched_from[:3] == ["100", "200", "205"]
    assert node.stats.lists == 2
    kinds = [item[0] if item[0] == "sync" else item[1] for item in list(node._events.queue)]
    assert kinds == ["sync", "ADDED", "sync", "MODIFIED"]
