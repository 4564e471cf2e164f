"""Build and cache the Kubernetes control-plane binaries that the test cluster runs.

No package registry ships a ready ``kube-apiserver``, so the harness builds one from Debian
bookworm's ``kubernetes`` source package, whose original tarball holds the complete upstream
v1.20.2 tree (with ``vendor/``). Steps of :func:`ensure_binaries`:

1. install the Debian packages the build and the cluster need (``golang-go``, ``rsync``,
   ``make``, ``etcd-server``, ``openssl`` and Debian's copies of two Go libraries);
2. download the source package through a *private* ``deb-src`` list derived at run time from
   the machine's own apt sources, with private apt state, so ``/etc/apt`` stays untouched;
3. unpack the ``*.orig.tar.*`` (the Debian revision is not pinned);
4. replace the vendored ``modern-go/reflect2`` and ``json-iterator/go`` with Debian's newer
   copies: the vendored reflect2 1.0.1 makes a server built with Go >= 1.18 panic on its
   first JSON request;
5. ``make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"`` (1.20
   builds in GOPATH mode; no kubelet, nodes are simulated by :mod:`tests.cluster.simnode`);
6. move the binaries into ``~/.cache/nas-bohb/k8s/<version>/`` (``NAS_BOHB_CLUSTER_CACHE``
   overrides the root) in one rename, then delete the ~3.4 GB work tree.

A second call finds the cache and returns at once. Concurrent builds of one version are
serialised with a lock file, so a test session and ``make cluster-build`` can race safely.

.. note::
   A cold build takes about 7 minutes of two idle cores and ~3.4 GB of disk while it runs.
   Each step has a time limit (``NAS_BOHB_CLUSTER_BUILD_TIMEOUT`` seconds for ``make``,
   default 3600) so a broken build fails instead of hanging CI. Installing packages needs
   root; as another user the missing packages are named in the error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

#: Upstream Kubernetes version the harness builds and caches.
KUBERNETES_VERSION = "1.20.2"
#: Control-plane binaries built; a node is simulated, so no kubelet.
SERVER_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: Debian packages needed to build the binaries.
BUILD_PACKAGES = (
    "golang-go",
    "rsync",
    "make",
    "golang-github-modern-go-reflect2-dev",
    "golang-github-json-iterator-go-dev",
)
#: Debian packages needed to run the cluster.
RUNTIME_PACKAGES = ("etcd-server", "openssl")
#: Vendored Go packages replaced with Debian's copies (import path below ``vendor/``).
_REPLACED_VENDOR_PACKAGES = ("github.com/modern-go/reflect2", "github.com/json-iterator/go")
_DEBIAN_GOCODE = Path("/usr/share/gocode/src")
_BUILD_INFO = "build-info.json"


class ClusterBuildError(RuntimeError):
    """The control-plane binaries could not be built, installed or found."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Paths of one cached build of the control plane."""

    version: str
    directory: Path

    def path(self, name: str) -> Path:
        """Return the path of binary ``name`` (one of :data:`SERVER_BINARIES`)."""
        return self.directory / name

    @property
    def kube_apiserver(self) -> Path:
        return self.path("kube-apiserver")

    @property
    def kube_controller_manager(self) -> Path:
        return self.path("kube-controller-manager")

    @property
    def kube_scheduler(self) -> Path:
        return self.path("kube-scheduler")


def cache_root() -> Path:
    """Folder holding one sub-folder of binaries per Kubernetes version."""
    configured = os.environ.get("NAS_BOHB_CLUSTER_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "nas-bohb" / "k8s"


def cached_binaries(version: str = KUBERNETES_VERSION) -> Binaries | None:
    """Return the cached build of ``version``, or None when any binary is missing."""
    binaries = Binaries(version, cache_root() / version)
    for name in SERVER_BINARIES:
        if not os.access(binaries.path(name), os.X_OK):
            return None
    return binaries


def ensure_binaries(version: str = KUBERNETES_VERSION) -> Binaries:
    """Return the cached binaries of ``version``, building them first when missing."""
    found = cached_binaries(version)
    if found is not None:
        logger.info("Kubernetes %s binaries are cached in %s.", version, found.directory)
        return found
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f"{version}.lock"):
        # Another process may have finished the same build while this one waited.
        found = cached_binaries(version)
        if found is not None:
            logger.info("Kubernetes %s binaries were built meanwhile in %s.", version,
                        found.directory)
            return found
        _remove_stale_work_dirs(root, version)
        return _build(version, root)


def ensure_packages(packages: Sequence[str]) -> None:
    """Install the Debian ``packages`` that are not installed yet, non-interactively."""
    missing = [name for name in packages if not _package_installed(name)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterBuildError(
            f"Debian packages {', '.join(missing)} are missing and installing them needs root; "
            f"run: sudo apt-get install -y {' '.join(missing)}"
        )
    logger.info("Installing Debian packages %s.", ", ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], env=env, timeout=900, what="apt-get update")
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        env=env,
        timeout=1800,
        what="apt-get install",
    )


# --- the build itself -------------------------------------------------------------------------


def _build(version: str, root: Path) -> Binaries:
    started = time.monotonic()
    logger.info("Building Kubernetes %s control-plane binaries (cold build, ~7 min on 2 cores).",
                version)
    ensure_packages(BUILD_PACKAGES + RUNTIME_PACKAGES)
    work = Path(tempfile.mkdtemp(prefix=f".build-{version}-", dir=root))
    succeeded = False
    try:
        source_version, tarball = _download_source(work)
        upstream = _upstream_version(source_version)
        if upstream != version:
            raise ClusterBuildError(
                f"Debian's kubernetes source {source_version} holds upstream {upstream}, "
                f"but the harness builds {version}"
            )
        tree = _extract(tarball, work / "src")
        _replace_vendored_packages(tree)
        _make(tree, version, work)
        output = work / "out"
        output.mkdir()
        for name in SERVER_BINARIES:
            # Fixed places only: _output/local/go/src links back into the tree (a loop).
            candidates = [tree / "_output" / "bin" / name,
                          tree / "_output" / "local" / "bin" / "linux" / "amd64" / name]
            binary = next((path for path in candidates if path.is_file()), None)
            if binary is None:
                raise ClusterBuildError(f"make finished but produced no {name} under _output/")
            shutil.copy2(binary, output / name)
        seconds = time.monotonic() - started
        info = {
            "version": version,
            "debian_source_version": source_version,
            "go": _go_version(),
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (output / _BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")

        # One rename makes the build visible, so a reader never sees half a cache entry.
        target = root / version
        if target.exists():
            shutil.rmtree(target)
        os.rename(output, target)
        succeeded = True
        logger.info("Kubernetes %s binaries built in %.0f s and cached in %s.", version, seconds,
                    target)
        return Binaries(version, target)
    finally:
        if succeeded or not os.environ.get("NAS_BOHB_CLUSTER_KEEP_WORK"):
            logger.info("Removing the build work tree %s.", work)
            shutil.rmtree(work, ignore_errors=True)
        else:
            logger.info("Keeping the failed build's work tree %s (NAS_BOHB_CLUSTER_KEEP_WORK).",
                        work)


def _download_source(work: Path) -> tuple[str, Path]:
    """Download the ``kubernetes`` source package; return its version and orig tarball."""
    apt = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "etc"):
        (apt / sub).mkdir(parents=True)
    sources = apt / "etc" / "sources.list"
    lines = _deb_src_lines()
    sources.write_text("".join(line + "\n" for line in lines))
    options = [
        f"-o=Dir::Etc::SourceList={sources}",
        "-o=Dir::Etc::SourceParts=/nonexistent",
        f"-o=Dir::State::Lists={apt / 'lists'}",
        f"-o=Dir::Cache={apt / 'cache'}",
        "-o=APT::Sandbox::User=root",
    ]
    logger.info("Fetching source indexes from %d private deb-src entries.", len(lines))
    # A failing secondary index (a security mirror, say) is not fatal: `source` decides.
    _run(["apt-get", *options, "update", "-q"], timeout=900, what="apt-get update (deb-src)",
         check=False)
    download = work / "download"
    download.mkdir()
    logger.info("Downloading Debian's kubernetes source package.")
    _run(["apt-get", *options, "source", "--download-only", "-q", "kubernetes"],
         cwd=download, timeout=1800, what="apt-get source")
    tarballs = [path for path in download.glob("kubernetes_*.orig.tar.*")
                if not path.name.endswith(".asc")]
    if len(tarballs) != 1:
        names = sorted(path.name for path in download.iterdir())
        raise ClusterBuildError(f"expected one kubernetes_*.orig.tar.* download, got {names}")
    dscs = list(download.glob("kubernetes_*.dsc"))
    source_version = dscs[0].name[len("kubernetes_"):-len(".dsc")] if dscs else ""
    if not source_version:
        source_version = tarballs[0].name[len("kubernetes_"):].split(".orig.")[0]
    logger.info("Downloaded kubernetes source %s (%s).", source_version, tarballs[0].name)
    return source_version, tarballs[0]


def _deb_src_lines() -> list[str]:
    """Derive ``deb-src`` lines for suite bookworm, main, from the machine's apt sources.

    Archive URIs are read from ``/etc/apt/sources.list.d/*.sources`` (deb822) and
    ``/etc/apt/sources.list`` (one-line) at run time; none is written into the project.
    """
    entries: list[tuple[str, str, str]] = []  # (uri, suite, signed_by)
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        entries.extend(_parse_deb822(Path(path).read_text()))
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        with contextlib.suppress(OSError):
            entries.extend(_parse_one_line(Path(path).read_text()))
    lines: list[str] = []
    for uri, suite, signed_by in entries:
        # The source package lives in bookworm (and its security suite); other suites of the
        # same archive are mapped onto bookworm so a newer host still finds it.
        target = "bookworm-security" if suite.endswith("-security") else "bookworm"
        option = f" [signed-by={signed_by}]" if signed_by else ""
        line = f"deb-src{option} {uri} {target} main"
        if line not in lines:
            lines.append(line)
    if not lines:
        raise ClusterBuildError(
            "found no Debian archive in /etc/apt/sources.list or /etc/apt/sources.list.d/ "
            "to derive a deb-src entry from"
        )
    return lines


def _parse_deb822(text: str) -> list[tuple[str, str, str]]:
    entries: list[tuple[str, str, str]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                entries.append((uri, suite, fields.get("signed-by", "")))
    return [entry for entry in entries if _is_debian_archive(entry[0])]


def _parse_one_line(text: str) -> list[tuple[str, str, str]]:
    entries: list[tuple[str, str, str]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)", line)
        if not match:
            continue
        signed_by = ""
        for option in (match.group("opts") or "").split():
            if option.startswith("signed-by="):
                signed_by = option.split("=", 1)[1]
        entries.append((match.group("uri"), match.group("suite"), signed_by))
    return [entry for entry in entries if _is_debian_archive(entry[0])]


def _is_debian_archive(uri: str) -> bool:
    # Only Debian's own archives (and their mirrors or snapshots) carry the source package.
    return bool(re.search(r"/debian(-security)?/?$", uri))


def _upstream_version(source_version: str) -> str:
    """Upstream version of a Debian version: ``1.20.5+really1.20.2-1.1+deb12u1`` -> 1.20.2."""
    version = source_version.split(":", 1)[-1].rsplit("-", 1)[0]
    if "really" in version:
        version = version.rsplit("really", 1)[1]
    return re.split(r"[+~]", version, maxsplit=1)[0]


def _extract(tarball: Path, destination: Path) -> Path:
    destination.mkdir()
    logger.info("Unpacking %s.", tarball.name)
    _run(["tar", "-xf", str(tarball), "-C", str(destination)], timeout=900, what="tar")
    tops = [path for path in destination.iterdir() if path.is_dir()]
    tree = tops[0] if len(tops) == 1 else destination
    if not (tree / "hack" / "lib" / "version.sh").is_file() or not (tree / "vendor").is_dir():
        raise ClusterBuildError(f"{tarball.name} does not hold a Kubernetes tree with vendor/")
    return tree


def _replace_vendored_packages(tree: Path) -> None:
    for package in _REPLACED_VENDOR_PACKAGES:
        vendored = tree / "vendor" / package
        debian = _DEBIAN_GOCODE / package
        if not debian.is_dir():
            raise ClusterBuildError(f"Debian's copy of {package} is missing at {debian}")
        for path in vendored.glob("*"):
            if path.is_file() and path.suffix in (".go", ".s"):
                path.unlink()
        copied = 0
        for path in sorted(debian.glob("*")):
            if path.suffix in (".go", ".s") and not path.name.endswith("_test.go"):
                shutil.copyfile(path, vendored / path.name)
                copied += 1
        logger.info("Replaced vendored %s with Debian's copy (%d files).", package, copied)


def _make(tree: Path, version: str, work: Path) -> None:
    major, minor = version.split(".")[:2]
    # No git metadata in a tarball: version.sh reads the version from this file instead.
    version_file = work / "version.env"
    version_file.write_text(
        f"KUBE_GIT_VERSION='v{version}'\nKUBE_GIT_TREE_STATE='clean'\n"
        f"KUBE_GIT_MAJOR='{major}'\nKUBE_GIT_MINOR='{minor}'\n"
    )
    env = {
        **os.environ,
        "KUBE_GIT_VERSION_FILE": str(version_file),
        # Keep Go's build cache inside the work tree, so deleting the tree frees it all.
        "GOCACHE": str(work / "gocache"),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        # The server binaries are static anyway; pure-Go helpers need no C compiler.
        "CGO_ENABLED": "0",
    }
    timeout = float(os.environ.get("NAS_BOHB_CLUSTER_BUILD_TIMEOUT", "3600"))
    log_path = work / "make.log"
    what = " ".join(f"cmd/{name}" for name in SERVER_BINARIES)
    logger.info("Running make WHAT=%r (log %s, limit %.0f s).", what, log_path, timeout)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["make", f"WHAT={what}"], cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stop = threading.Event()
        reporter = threading.Thread(
            target=_follow_log, args=(log_path, stop, started), daemon=True
        )
        reporter.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            raise ClusterBuildError(f"make did not finish within {timeout:.0f} s") from None
        except BaseException:
            # Ctrl-C or another failure: never leave a compiler running behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
            raise
        finally:
            stop.set()
            reporter.join()
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise ClusterBuildError(f"make exited with {code}; last lines:\n" + "\n".join(tail))
    logger.info("make finished in %.0f s.", time.monotonic() - started)


def _follow_log(path: Path, stop: threading.Event, started: float) -> None:
    """Echo make's progress lines and a heartbeat each minute while it runs."""
    position = 0
    last_beat = time.monotonic()
    while not stop.wait(2.0) or position < path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(position)
            chunk = handle.read()
        position += len(chunk)
        for line in chunk.decode(errors="replace").splitlines():
            if line.startswith(("+++", "!!!")) or "error" in line.lower():
                logger.info("make: %s", line.strip())
        if time.monotonic() - last_beat >= 60:
            last_beat = time.monotonic()
            logger.info("Still building, %.0f s so far.", last_beat - started)
        if stop.is_set():
            break


def _go_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["go", "version"], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    return "unknown"


# --- small helpers ----------------------------------------------------------------------------


def _package_installed(name: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.strip().endswith(" installed")


def _run(
    command: Sequence[str],
    *,
    what: str,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> None:
    """Run ``command`` with its output passed through; raise a ClusterBuildError on failure."""
    try:
        result = subprocess.run(
            list(command), cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
            stdout=sys.stderr, stderr=sys.stderr, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ClusterBuildError(f"{what} did not finish within {timeout:.0f} s") from None
    except FileNotFoundError as error:
        raise ClusterBuildError(f"{what}: command {command[0]!r} not found") from error
    if check and result.returncode != 0:
        raise ClusterBuildError(f"{what} exited with {result.returncode}")
    if result.returncode != 0:
        logger.warning("%s exited with %d; carrying on.", what, result.returncode)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Another process is building; waiting for the lock %s.", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_work_dirs(root: Path, version: str) -> None:
    # Called under the version's lock: any work tree left is from a killed build.
    for stale in root.glob(f".build-{version}-*"):
        logger.info("Removing a stale build work tree %s.", stale)
        shutil.rmtree(stale, ignore_errors=True)
