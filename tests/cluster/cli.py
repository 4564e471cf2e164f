"""Command line of the local cluster: ``python -m tests.cluster build|up|down|env|status``.

``make cluster-up`` runs ``up``: it builds the binaries when missing, starts the control
plane and simulated nodes as background processes with state in
``~/.cache/nas-bohb/cluster-run`` (``--state-dir`` to change), and prints the
``export KUBECONFIG=...`` line to use. ``up`` on a running cluster only prints that line;
``down`` stops everything ``up`` started and may be run any number of times.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.cluster import build, control, simnode

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description="A real local Kubernetes (1.20 control plane, simulated nodes) on 127.0.0.1.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build and cache the control-plane binaries")
    up = commands.add_parser("up", help="start the cluster and its simulated nodes")
    up.add_argument("--nodes", type=int, default=1, help="simulated nodes to start (default 1)")
    up.add_argument("--node-mode", choices=("exec", "simulate"), default="exec",
                    help="exec runs each pod's command locally; simulate only pretends")
    up.add_argument("--node-cpu", default=simnode.NodeCapacity.cpu)
    up.add_argument("--node-memory", default=simnode.NodeCapacity.memory)
    up.add_argument("--node-gpus", type=int, default=simnode.NodeCapacity.gpus,
                    help="nvidia.com/gpu capacity per node (nothing is run on a GPU)")
    up.add_argument("--node-pods", type=int, default=simnode.NodeCapacity.pods)
    commands.add_parser("down", help="stop everything `up` started")
    commands.add_parser("env", help="print the export line for the cluster's kubeconfig")
    commands.add_parser("status", help="show the cluster's processes and memory")
    for command in commands.choices.values():
        command.add_argument("--state-dir", type=Path, default=control.default_state_dir(),
                             help="state folder (default ~/.cache/nas-bohb/cluster-run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    state_dir: Path = args.state_dir.expanduser().absolute()
    try:
        if args.command == "build":
            build.ensure_binaries()
        elif args.command == "up":
            return _up(state_dir, args)
        elif args.command == "down":
            stopped = control.stop_cluster(state_dir)
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        elif args.command == "env":
            return _env(state_dir)
        elif args.command == "status":
            return _status(state_dir)
    except (build.ClusterBuildError, control.ClusterError, simnode.KubeApiError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _up(state_dir: Path, args: argparse.Namespace) -> int:
    info = control.ClusterInfo.load(state_dir)
    statuses = control.process_statuses(state_dir)
    if (info is not None and statuses and all(status.running for status in statuses)
            and control.apiserver_ready(info)):
        print(f"# the cluster in {state_dir} is already running")
        print(f"export KUBECONFIG={info.kubeconfig}")
        return 0
    # Whatever a crashed or half-stopped earlier run left is stopped first.
    control.stop_cluster(state_dir)
    started = time.monotonic()
    info = control.start_cluster(state_dir)
    try:
        _start_nodes(info, state_dir, args)
    except BaseException:
        control.stop_cluster(state_dir)
        raise
    print(f"# cluster ready in {time.monotonic() - started:.1f} s; API {info.apiserver_url}; "
          f"logs in {state_dir / 'logs'}; stop with: python -m tests.cluster down")
    print(f"export KUBECONFIG={info.kubeconfig}")
    return 0


def _start_nodes(info: control.ClusterInfo, state_dir: Path, args: argparse.Namespace) -> None:
    # The nodes run `python -m tests.cluster.simnode` from the state folder: point
    # PYTHONPATH at the checkout so the package is found there.
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{root}:{path}" if path else root}
    for index in range(args.nodes):
        name = f"nas-bohb-{args.node_mode}-{index}"
        work = state_dir / "nodes" / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        control.spawn_process(state_dir, f"node-{name}", [
            sys.executable, "-m", "tests.cluster.simnode", f"--kubeconfig={info.kubeconfig}",
            f"--name={name}", f"--mode={args.node_mode}", f"--work-dir={work}",
            f"--cpu={args.node_cpu}", f"--memory={args.node_memory}",
            f"--gpus={args.node_gpus}", f"--pods={args.node_pods}",
        ], env=env)
    _wait_for_nodes(info, args.nodes, state_dir)


def _wait_for_nodes(info: control.ClusterInfo, count: int, state_dir: Path) -> None:
    api = simnode.KubeApi.from_kubeconfig(info.kubeconfig)
    deadline = time.monotonic() + 60
    while True:
        nodes = api.get("/api/v1/nodes").get("items") or []
        ready = [node for node in nodes if _node_ready(node)]
        if len(ready) >= count:
            return
        if time.monotonic() > deadline:
            raise control.ClusterError(
                f"{len(ready)} of {count} simulated nodes became Ready; see {state_dir / 'logs'}"
            )
        time.sleep(0.25)


def _node_ready(node: dict[str, object]) -> bool:
    status = node.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    return any(
        isinstance(condition, dict) and condition.get("type") == "Ready"
        and condition.get("status") == "True"
        for condition in conditions or []
    )


def _env(state_dir: Path) -> int:
    info = control.ClusterInfo.load(state_dir)
    if info is None:
        print(f"error: no cluster in {state_dir}; start one with: python -m tests.cluster up",
              file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={info.kubeconfig}")
    return 0


def _status(state_dir: Path) -> int:
    info = control.ClusterInfo.load(state_dir)
    statuses = control.process_statuses(state_dir)
    if info is None and not statuses:
        print(f"no cluster in {state_dir}")
        return 1
    total = 0
    for status in statuses:
        total += status.rss_bytes
        state = "running" if status.running else "stopped"
        print(f"{status.name:40} pid {status.pid!s:>8}  {state:8} "
              f"{status.rss_bytes / 2**20:7.1f} MiB")
    print(f"{'total resident memory':40} {'':22} {total / 2**20:7.1f} MiB")
    if info is not None:
        ready = control.apiserver_ready(info)
        print(f"API server {info.apiserver_url}: {'ready' if ready else 'not answering'}")
        print(f"export KUBECONFIG={info.kubeconfig}")
        return 0 if ready else 1
    return 1
