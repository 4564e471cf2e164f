"""Start and stop a real Kubernetes control plane on 127.0.0.1 for tests and for people.

One call of :func:`start_cluster` makes certificates with ``openssl`` (a CA, a serving
certificate for 127.0.0.1, ``localhost`` and ``kubernetes.default.svc...``, a service-account
key pair and a static token file), then starts etcd, kube-apiserver (RBAC on),
kube-controller-manager (Job controller, garbage collector, service-account tokens) and
kube-scheduler, each on free loopback ports, and waits until the API answers ``/readyz``,
both controllers answer ``/healthz`` and the ``default`` service account has its token.
Everything it starts is recorded in a state folder (``pids/*.pid``, ``logs/*.log``,
``cluster.json``, ``kubeconfig``), so :func:`stop_cluster` can stop it from any process, as
many times as one likes.

Layout of a state folder::

    cluster.json   ports, token, paths (:class:`ClusterInfo`)
    kubeconfig     bearer-token kubeconfig for the admin user
    pki/           ca.crt, apiserver.crt/key, sa.key/pub, tokens.csv
    logs/          one log per component and simulated node
    pids/          one pid file per process: "PID START_TICKS"
    nodes/         work folders of simulated nodes started by ``up`` (pod logs)

.. note::
   Debian's etcd 3.4 has no ``--unsafe-no-fsync``; etcd's data therefore lives on
   ``/dev/shm`` when it exists (fsync is free on tmpfs; ~120 MB of memory, mostly the
   preallocated WAL) and is deleted by :func:`stop_cluster`, or by the next start when a
   killed session could not. Ports are chosen free at start; a port taken between the check and
   the bind makes the start retry with new ones.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from tests.cluster import build, simnode

logger = logging.getLogger(__name__)

#: Components in start order; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
_CONTROLLERS = (
    "*,-nodelifecycle,-cloud-node-lifecycle,-route,-service,-nodeipam,-attachdetach,"
    "-persistentvolume-binder,-persistentvolume-expander"
)
_SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_CONTEXT = "nas-bohb-local"
_SHM_PREFIX = "nas-bohb-etcd-"
# Children started by this process, kept so that stopping them also reaps them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ClusterError(RuntimeError):
    """The local cluster could not be started, or a stop could not be carried out."""


@dataclasses.dataclass
class ClusterInfo:
    """What a running local cluster is: where it listens and how to reach it."""

    state_dir: Path
    kubeconfig: Path
    apiserver_port: int
    etcd_port: int
    admin_token: str
    ca_cert: Path
    etcd_data_dir: Path
    version: str

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def save(self) -> None:
        data = {key: str(value) if isinstance(value, Path) else value
                for key, value in dataclasses.asdict(self).items()}
        _write_private(self.state_dir / "cluster.json", json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> ClusterInfo | None:
        """Read ``cluster.json`` of ``state_dir``; None when there is none."""
        try:
            data = json.loads((state_dir / "cluster.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(
            state_dir=Path(data["state_dir"]), kubeconfig=Path(data["kubeconfig"]),
            apiserver_port=int(data["apiserver_port"]), etcd_port=int(data["etcd_port"]),
            admin_token=str(data["admin_token"]), ca_cert=Path(data["ca_cert"]),
            etcd_data_dir=Path(data["etcd_data_dir"]), version=str(data["version"]),
        )


def default_state_dir() -> Path:
    """State folder of the cluster that ``python -m tests.cluster up`` starts."""
    return Path.home() / ".cache" / "nas-bohb" / "cluster-run"


# --- start ------------------------------------------------------------------------------------


def start_cluster(
    state_dir: Path,
    *,
    binaries: build.Binaries | None = None,
    die_with_parent: bool = False,
    timeout: float = 120.0,
) -> ClusterInfo:
    """Start etcd and the control plane with state in ``state_dir``; return when usable.

    ``die_with_parent`` makes the kernel kill every component when the calling thread's
    process dies (a test session killed hard leaves nothing behind); ``python -m
    tests.cluster up`` leaves it off so the cluster outlives the command. On any failure
    everything started so far is stopped again and a :class:`ClusterError` names the
    component and the end of its log.
    """
    binaries = binaries or build.ensure_binaries()
    build.ensure_packages(build.RUNTIME_PACKAGES)
    etcd = shutil.which("etcd")
    if etcd is None:
        raise ClusterError("no etcd binary on PATH (Debian package etcd-server)")
    state_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "pids", "pki", "nodes"):
        (state_dir / sub).mkdir(exist_ok=True)
    started = time.monotonic()
    token = _make_pki(state_dir / "pki")
    last_error: ClusterError | None = None
    for attempt in range(3):
        try:
            info = _start_once(state_dir, binaries, etcd, token, die_with_parent, timeout)
        except _PortTaken as taken:
            # Another program took a port between choosing and binding it: choose again.
            logger.warning("Cluster %s: %s; retrying with new ports (%d).", state_dir, taken,
                           attempt + 1)
            stop_cluster(state_dir)
            last_error = ClusterError(str(taken))
            continue
        except BaseException:
            stop_cluster(state_dir)
            raise
        logger.info("Cluster %s is ready at %s after %.1f s.", state_dir, info.apiserver_url,
                    time.monotonic() - started)
        return info
    raise last_error or ClusterError("cluster did not start")


class _PortTaken(ClusterError):
    pass


def _start_once(
    state_dir: Path,
    binaries: build.Binaries,
    etcd: str,
    token: str,
    die_with_parent: bool,
    timeout: float,
) -> ClusterInfo:
    pki = state_dir / "pki"
    etcd_port, peer_port, api_port, cm_port, sched_port = _free_ports(5)
    etcd_data = _etcd_data_dir(state_dir)
    info = ClusterInfo(
        state_dir=state_dir, kubeconfig=state_dir / "kubeconfig", apiserver_port=api_port,
        etcd_port=etcd_port, admin_token=token, ca_cert=pki / "ca.crt",
        etcd_data_dir=etcd_data, version=binaries.version,
    )
    # Saved first, so that a failed start can still be stopped and cleaned by `down`.
    info.save()
    _write_kubeconfig(info)
    deadline = time.monotonic() + timeout
    spawn = _Spawner(state_dir, die_with_parent)

    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    etcd_pid = spawn("etcd", [
        etcd, "--name=nas-bohb", f"--data-dir={etcd_data / 'data'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=nas-bohb={peer_url}", "--log-level=warn", "--logger=zap",
        *(["--unsafe-no-fsync=true"] if _etcd_has_unsafe_no_fsync(etcd) else []),
    ])
    # Lets a later start remove this folder if etcd dies without a `down` (a killed session).
    (etcd_data / "owner").write_text(f"{etcd_pid} {_start_ticks(etcd_pid)}\n")
    _wait_for("etcd", lambda: _http_ok(f"{etcd_url}/health"), deadline, state_dir)

    spawn("kube-apiserver", [
        str(binaries.kube_apiserver),
        f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-account-issuer={_SERVICE_ACCOUNT_ISSUER}",
        "--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC",
        f"--token-auth-file={pki / 'tokens.csv'}", "--allow-privileged=true",
        "--enable-priority-and-fairness=false", "--endpoint-reconciler-type=none",
        f"--cert-dir={pki / 'apiserver-generated'}", "--profiling=false", "--v=1",
    ])
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    _wait_for("kube-apiserver",
              lambda: _http_ok(f"{info.apiserver_url}/readyz", context=context, token=token),
              deadline, state_dir)

    kubeconfig = str(info.kubeconfig)
    spawn("kube-controller-manager", [
        str(binaries.kube_controller_manager),
        f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", "--leader-elect=false",
        f"--controllers={_CONTROLLERS}", "--bind-address=127.0.0.1", "--port=0",
        f"--secure-port={cm_port}", f"--cert-dir={pki / 'controller-manager'}",
        "--profiling=false", "--v=1",
    ])
    spawn("kube-scheduler", [
        str(binaries.kube_scheduler),
        f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", "--port=0", f"--secure-port={sched_port}",
        f"--cert-dir={pki / 'scheduler'}", "--profiling=false", "--v=1",
    ])
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    for name, port in (("kube-controller-manager", cm_port), ("kube-scheduler", sched_port)):
        healthz = functools.partial(_http_ok, f"https://127.0.0.1:{port}/healthz",
                                    context=insecure)
        _wait_for(name, healthz, deadline, state_dir)

    # Pods cannot be created in a namespace before its default service account exists.
    sa_url = f"{info.apiserver_url}/api/v1/namespaces/default/serviceaccounts/default"
    _wait_for("kube-controller-manager",
              lambda: _service_account_has_token(sa_url, context, token), deadline, state_dir,
              what="the default service account's token")
    return info


class _Spawner:
    """Start components detached, with a log file and a pid file each."""

    def __init__(self, state_dir: Path, die_with_parent: bool) -> None:
        self.state_dir = state_dir
        self.die_with_parent = die_with_parent

    def __call__(self, name: str, argv: Sequence[str]) -> int:
        return spawn_process(self.state_dir, name, argv, die_with_parent=self.die_with_parent)


def spawn_process(
    state_dir: Path,
    name: str,
    argv: Sequence[str],
    *,
    die_with_parent: bool = False,
    env: dict[str, str] | None = None,
) -> int:
    """Start ``argv`` in its own session, logging to ``logs/NAME.log``; record its pid."""
    log = open(state_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    with log:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=state_dir, env=env, start_new_session=True,
            preexec_fn=simnode.die_with_parent_preexec() if die_with_parent else None,
        )
    _CHILDREN[process.pid] = process
    ticks = _start_ticks(process.pid)
    (state_dir / "pids" / f"{name}.pid").write_text(f"{process.pid} {ticks}\n")
    logger.info("Started %s (pid %d).", name, process.pid)
    return process.pid


def _wait_for(
    component: str,
    ready: Callable[[], bool],
    deadline: float,
    state_dir: Path,
    *,
    what: str = "",
) -> None:
    pid_file = state_dir / "pids" / f"{component}.pid"
    while True:
        if ready():
            return
        if not _pid_file_alive(pid_file):
            tail = _log_tail(state_dir / "logs" / f"{component}.log")
            if "address already in use" in tail:
                raise _PortTaken(f"{component} found its port taken")
            raise ClusterError(f"{component} exited during start; end of its log:\n{tail}")
        if time.monotonic() > deadline:
            tail = _log_tail(state_dir / "logs" / f"{component}.log")
            raise ClusterError(
                f"{component} did not become ready ({what or 'health check'}) in time; "
                f"end of its log:\n{tail}"
            )
        time.sleep(0.25)


def _http_ok(url: str, *, context: ssl.SSLContext | None = None, token: str = "") -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _service_account_has_token(url: str, context: ssl.SSLContext, token: str) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            account = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return bool(account.get("secrets"))


# --- stop -------------------------------------------------------------------------------------


def stop_cluster(state_dir: Path, *, grace: float = 10.0) -> list[str]:
    """Stop every process recorded in ``state_dir``; return the names that were running.

    Simulated nodes go first, then the components in reverse start order. Safe to call
    when nothing runs, and from a different process than the one that started them.
    """
    stopped: list[str] = []
    pids = state_dir / "pids"
    if pids.is_dir():
        names = [path.stem for path in pids.glob("*.pid")]
        order = {name: index for index, name in enumerate(COMPONENTS)}
        # Nodes (not components) first; then scheduler, controller-manager, apiserver, etcd.
        names.sort(key=lambda name: -order.get(name, len(COMPONENTS)))
        for name in names:
            if stop_process(pids / f"{name}.pid", grace=grace):
                stopped.append(name)
                logger.info("Stopped %s.", name)
    info = ClusterInfo.load(state_dir)
    if info is not None and info.etcd_data_dir.exists():
        shutil.rmtree(info.etcd_data_dir, ignore_errors=True)
    return stopped


def stop_process(pid_file: Path, *, grace: float = 10.0) -> bool:
    """Stop the process group of a pid file if that process still runs; remove the file."""
    pid, ticks = _read_pid_file(pid_file)
    running = pid is not None and _alive(pid, ticks)
    if pid is not None and running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(pid, ticks) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if _alive(pid, ticks):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid, ticks):
                _reap(pid)
                time.sleep(0.05)
        _reap(pid)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    return running


def _reap(pid: int) -> None:
    process = _CHILDREN.get(pid)
    if process is not None and process.poll() is not None:
        _CHILDREN.pop(pid, None)


# --- status -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcessStatus:
    """One recorded process: whether it runs and its resident memory."""

    name: str
    pid: int | None
    running: bool
    rss_bytes: int


def process_statuses(state_dir: Path) -> list[ProcessStatus]:
    """Status of every process recorded in ``state_dir``."""
    statuses: list[ProcessStatus] = []
    pids = state_dir / "pids"
    for pid_file in sorted(pids.glob("*.pid")) if pids.is_dir() else []:
        pid, ticks = _read_pid_file(pid_file)
        running = pid is not None and _alive(pid, ticks)
        rss = _rss_bytes(pid) if pid is not None and running else 0
        statuses.append(ProcessStatus(pid_file.stem, pid, running, rss))
    return statuses


def apiserver_ready(info: ClusterInfo) -> bool:
    """Whether the cluster's API server answers ``/readyz``."""
    context = ssl.create_default_context(cafile=str(info.ca_cert))
    return _http_ok(f"{info.apiserver_url}/readyz", context=context, token=info.admin_token)


# --- certificates, tokens, kubeconfig ---------------------------------------------------------


def _make_pki(pki: Path) -> str:
    """Create the CA, serving certificate, service-account keys and token file; return the
    admin token. Existing files are kept, so a restarted cluster keeps its credentials."""
    if not (pki / "ca.crt").exists():
        _openssl(pki, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                 "-out", "ca.crt", "-days", "3650", "-subj", "/CN=nas-bohb-local-ca")
    if not (pki / "apiserver.crt").exists():
        names = [
            "IP:127.0.0.1", "IP:10.0.0.1", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
        (pki / "apiserver.ext").write_text(
            f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth\n"
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        )
        _openssl(pki, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
                 "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver")
        _openssl(pki, "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey",
                 "ca.key", "-CAcreateserial", "-out", "apiserver.crt", "-days", "3650",
                 "-extfile", "apiserver.ext")
    if not (pki / "sa.key").exists():
        _openssl(pki, "genrsa", "-out", "sa.key", "2048")
        _openssl(pki, "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
    tokens = pki / "tokens.csv"
    if not tokens.exists():
        admin = secrets.token_hex(24)
        # The controllers get tokens of their own so the API server's logs tell them apart.
        lines = [
            f"{admin},admin,admin,system:masters",
            f"{secrets.token_hex(24)},system:kube-controller-manager,kcm,system:masters",
            f"{secrets.token_hex(24)},system:kube-scheduler,sched,system:masters",
        ]
        _write_private(tokens, "\n".join(lines) + "\n")
    return tokens.read_text().split(",", 1)[0]


def _openssl(cwd: Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                            check=False, timeout=60)
    if result.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _write_kubeconfig(info: ClusterInfo) -> None:
    ca_data = base64.b64encode(info.ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": _CONTEXT, "cluster": {
            "server": info.apiserver_url, "certificate-authority-data": ca_data}}],
        "users": [{"name": "admin", "user": {"token": info.admin_token}}],
        "contexts": [{"name": _CONTEXT, "context": {"cluster": _CONTEXT, "user": "admin"}}],
        "current-context": _CONTEXT,
    }
    _write_private(info.kubeconfig, yaml.safe_dump(config, sort_keys=False))


# --- small helpers ----------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]


def _etcd_data_dir(state_dir: Path) -> Path:
    """A fresh folder for etcd (its data in ``data/``), in memory when possible."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        _remove_orphaned_etcd_dirs(shm)
        return Path(tempfile.mkdtemp(prefix=_SHM_PREFIX, dir=shm))
    folder = state_dir / "etcd"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def _remove_orphaned_etcd_dirs(shm: Path) -> None:
    # A session killed hard leaves its etcd folder (>100 MB of memory) behind: remove the
    # folders whose etcd no longer runs (or that never got an owner within a minute).
    folders = list(shm.glob(f"{_SHM_PREFIX}*"))
    if not folders:
        return
    in_use = _command_lines()
    for folder in folders:
        pid, ticks = _read_pid_file(folder / "owner")
        if pid is not None and _alive(pid, ticks):
            continue
        # Without a live owner, any process naming the folder (an etcd of another
        # version of this harness) still keeps it.
        if any(str(folder) in line for line in in_use):
            continue
        try:
            if time.time() - folder.stat().st_mtime < 60:
                continue
        except OSError:
            continue
        logger.info("Removing the orphaned etcd folder %s.", folder)
        shutil.rmtree(folder, ignore_errors=True)


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"))
    return lines


def _etcd_has_unsafe_no_fsync(etcd: str) -> bool:
    result = subprocess.run([etcd, "--help"], capture_output=True, text=True, check=False,
                            timeout=30)
    return "unsafe-no-fsync" in result.stdout + result.stderr


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _read_pid_file(path: Path) -> tuple[int | None, int | None]:
    try:
        fields = path.read_text().split()
        return int(fields[0]), int(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return None, None


def _start_ticks(pid: int) -> int:
    # Field 22 of /proc/PID/stat: start time in clock ticks; it tells a reused pid apart.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, ticks: int | None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return ticks is None or int(fields[19]) == ticks


def _pid_file_alive(path: Path) -> bool:
    pid, ticks = _read_pid_file(path)
    if pid is not None:
        _reap(pid)
    return pid is not None and _alive(pid, ticks)


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
