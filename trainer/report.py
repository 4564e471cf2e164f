"""How a trainer pod tells its ``JointSearch`` what it is doing, with nothing but the stdlib.

The operator starts every trial as a Job whose pod runs ``python -m trainer ... --report
kube``. This module is the trainer's side of that conversation: it merge-patches the
trial's own entry ``status.trials.<trialId>`` of its ``JointSearch`` through the status
subresource, with the pod's service-account token. A merge patch on a map keyed by
trial id lets hundreds of trainers write into one status without clobbering each other,
and the per-search Role the operator creates allows ``patch`` on that one search's status
and nothing else.

Two kinds of writes:

* ``progress`` (camelCase, shown live): epoch, training seconds, budget, train loss,
  learning rate, validation error when known. Sent from a background thread and
  coalesced (only the newest waits), at most one every ``NAS_BOHB_REPORT_INTERVAL``
  seconds, so a slow API server never slows training.
* ``result``: the trainer's record (``docs/architecture.md``) with its learning curve
  thinned to at most :data:`MAX_CURVE_POINTS` points. Sent synchronously, with retries,
  before the process exits; the operator moves it into its ledger and removes it from
  the status.

Each write carries the resourceVersion read just before it (the trainer's Role also allows
``get`` of its own search), so a write that loses a race with another trainer fails fast
and is retried after a jittered pause, rather than retried in a tight loop by the API
server.

The result also goes into the container's **termination message**, always and before the
patch is tried: a compact JSON ``{"trialId": ..., "result": {...}}`` of the same entry
(:func:`termination_message`, at most 4096 bytes, the learning curve given up first when
it does not fit), written to ``NAS_BOHB_TERMINATION_LOG``. The kubelet copies that file
into the pod's ``containerStatuses[].state.terminated.message`` when the container ends,
so when the status patch cannot get through (an overloaded API server, a token that
cannot patch), the operator still finds the result on the trial's pod, checks it as it
checks the status, and records it.

Nothing here may end a training run: every failure is logged and swallowed. Values are
made JSON-safe first (NaN and infinity become ``null``), because the API server refuses
them and the operator's status must never hold them.

Environment (set by the operator on the trial pod):

=================================== ==================================================
``NAS_BOHB_SEARCH_NAMESPACE``       namespace of the ``JointSearch``
``NAS_BOHB_SEARCH_NAME``            its name
``NAS_BOHB_TRIAL_ID``               the trial this pod runs (``"3-0-7-b2"``)
``NAS_BOHB_TRIAL_ATTEMPT``          the attempt (1, 2, ...); stale attempts are ignored
``NAS_BOHB_SERVICEACCOUNT_DIR``     folder with ``token`` and ``ca.crt`` (default: the
                                    pod's mounted service account)
``KUBERNETES_SERVICE_HOST``/``PORT`` the API server, as every pod sees it
``NAS_BOHB_REPORT_INTERVAL``        least seconds between progress writes (default 10)
``NAS_BOHB_REPORT_DEADLINE``        most seconds spent retrying the result (default 120)
``NAS_BOHB_TERMINATION_LOG``        the container's ``terminationMessagePath``, where the
                                    result is also written (default
                                    ``/dev/termination-log``); a missing or unwritable
                                    file is logged and ignored
=================================== ==================================================

.. note::
   Only the trial's own entry is written, but Kubernetes RBAC cannot restrict a patch to
   one field: a trainer holding its search's token could write other status fields of
   that search. The operator re-asserts the fields it owns and validates every trial
   entry it reads, so a wrong write is ignored (with an Event), not obeyed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import queue
import random
import ssl
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: Where Kubernetes mounts a pod's service-account credentials.
DEFAULT_SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: The API group, version and plural of the resource this module writes to.
API_PATH = "apis/nas-bohb.io/v1alpha1"
PLURAL = "jointsearches"
#: A long run has thousands of epochs; the status (and the ledger) keep this many points.
MAX_CURVE_POINTS = 32
#: HTTP statuses worth retrying: throttling, server trouble, timeouts at a proxy, and 409:
#: the API server gives up on a patch after a few conflicting concurrent writes.
_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Kubernetes' default ``terminationMessagePath``, and the most of it the kubelet keeps.
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096
#: What a termination message keeps of a result when the whole entry does not fit.
_ESSENTIAL_KEYS = (
    "status", "validation_error", "test_error", "validation_loss", "train_loss",
    "budget_seconds", "train_seconds", "wall_seconds", "epochs", "steps", "n_params",
    "device", "torch_version", "trainer_version", "seed", "attempt", "reported_at", "message",
)


class Reporter(Protocol):
    """What the trainer calls; both methods must return quickly and never raise."""

    def on_progress(self, progress: Mapping[str, Any]) -> None: ...

    def on_result(self, record: Mapping[str, Any]) -> None: ...


class ReportConfigError(ValueError):
    """The reporter cannot be built: an environment variable is missing or malformed."""


class NullReporter:
    """Reports nothing (``--report none``, the default outside Kubernetes)."""

    def on_progress(self, progress: Mapping[str, Any]) -> None:
        return None

    def on_result(self, record: Mapping[str, Any]) -> None:
        return None


def make_reporter(kind: str | None) -> Reporter:
    """The reporter for ``--report KIND``: ``none`` (or empty) or ``kube``.

    Raises :class:`ReportConfigError` naming the problem when ``kind`` is unknown or the
    ``kube`` environment is incomplete; the trainer should treat that as a bad argument.
    """
    if kind in (None, "", "none"):
        return NullReporter()
    if kind == "kube":
        return KubeReporter(KubeTarget.from_env(os.environ))
    raise ReportConfigError(f"--report: unknown reporter {kind!r}; expected 'none' or 'kube'")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` and tuples as lists.

    Numbers stay numbers (numpy scalars go through ``item()``); mapping keys become strings.
    Anything else that JSON cannot hold becomes its ``str``.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        return json_safe(item())
    return str(value)


def thin_curve(curve: list[Any], limit: int = MAX_CURVE_POINTS) -> list[Any]:
    """At most ``limit`` evenly spaced points of ``curve``, always keeping first and last."""
    if len(curve) <= limit:
        return list(curve)
    step = (len(curve) - 1) / (limit - 1)
    return [curve[round(i * step)] for i in range(limit)]


def progress_entry(progress: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's progress dict in the status's camelCase vocabulary."""
    names = {
        "epoch": "epoch",
        "train_seconds": "trainSeconds",
        "budget_seconds": "budgetSeconds",
        "train_loss": "trainLoss",
        "lr": "lr",
        "validation_error": "validationError",
    }
    entry = {names[k]: v for k, v in progress.items() if k in names}
    entry["reportedAt"] = round(time.time(), 3)
    return dict(json_safe(entry))


def result_entry(record: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's record as it goes into the status: JSON-safe, curve thinned, stamped."""
    entry = dict(record)
    curve = entry.get("learning_curve")
    if isinstance(curve, list):
        entry["learning_curve"] = thin_curve(curve)
    entry["reported_at"] = round(time.time(), 3)
    return dict(json_safe(entry))


def termination_message(trial_id: str, entry: Mapping[str, Any],
                        limit: int = MAX_TERMINATION_MESSAGE_BYTES) -> bytes | None:
    """A result entry as a termination message: ``{"trialId": ..., "result": entry}``.

    Compact JSON of at most ``limit`` bytes, never NaN or infinity. What does not fit is
    given up in this order: the learning curve (``learning_curve_dropped`` says so), the
    configuration (the operator has it in its ledger), every field but the essential ones
    (status, errors, losses, seconds, size, evidence, attempt, message), the end of the
    message, then all but status, errors and attempt. ``None`` when not even those fit (a
    trial id of thousands of characters).
    """
    entry = dict(json_safe(entry))
    slim = {k: v for k, v in entry.items() if k != "learning_curve"}
    if "learning_curve" in entry:
        slim["learning_curve_dropped"] = True
    bare = {k: v for k, v in slim.items() if k != "config"}
    essential = {k: bare[k] for k in (*_ESSENTIAL_KEYS, "learning_curve_dropped") if k in bare}
    for result in (entry, slim, bare, essential):
        data = _message_bytes(trial_id, result)
        if len(data) <= limit:
            return data
    text = essential.get("message")
    if isinstance(text, str) and text:
        # The longest start of the message that fits (escaped characters take more bytes).
        room = limit - len(_message_bytes(trial_id, {**essential, "message": ""}))
        low, high = 0, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if len(json.dumps(text[:middle])) - 2 <= room:
                low = middle
            else:
                high = middle - 1
        data = _message_bytes(trial_id, {**essential, "message": text[:low]})
        if low and len(data) <= limit:
            return data
    minimal: dict[str, Any] = {k: essential[k] for k in (
        "status", "validation_error", "test_error", "attempt") if k in essential}
    data = _message_bytes(trial_id, minimal)
    return data if len(data) <= limit else None


def _message_bytes(trial_id: str, result: Mapping[str, Any]) -> bytes:
    return json.dumps({"trialId": trial_id, "result": result}, allow_nan=False,
                      separators=(",", ":")).encode()


def write_termination_message(path: str, data: bytes) -> None:
    """Put ``data`` into the termination-message file ``path``: all of it or nothing.

    The file must exist: the kubelet creates it before the container starts, so a missing
    one means nobody would read it (``FileNotFoundError``). ``data`` goes to a temporary
    file beside it that is renamed over it. Where that cannot work (the kubelet
    bind-mounts the file, and a mount point cannot be renamed over; ``/dev`` is not
    writable for a non-root user) the file is truncated and written with one ``write``
    call, undone if it falls short: the kubelet reads the file only after the container
    has exited, and sees either nothing or the whole message. Raises ``OSError``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no such termination-message file", path)
    try:
        _replace_file(path, data)
    except OSError:
        _overwrite_file(path, data)


def _replace_file(path: str, data: bytes) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                         prefix=".termination-message-")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _overwrite_file(path: str, data: bytes) -> None:
    handle = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        written = os.write(handle, data)
        if written != len(data):
            os.ftruncate(handle, 0)  # Half a message must not be read as one.
            raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)", path)
    finally:
        os.close(handle)


@dataclass(frozen=True)
class KubeTarget:
    """Where and as whom a trial reports: the API server, the search, the trial."""

    api_url: str
    namespace: str
    search: str
    trial_id: str
    attempt: int
    token_path: str
    ca_path: str | None
    interval_seconds: float = 10.0
    deadline_seconds: float = 120.0
    termination_log: str | None = None  # None: no termination message is written.

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KubeTarget:
        """Read the pod's environment; raise :class:`ReportConfigError` naming what is off."""
        missing = [
            name
            for name in (
                "NAS_BOHB_SEARCH_NAMESPACE",
                "NAS_BOHB_SEARCH_NAME",
                "NAS_BOHB_TRIAL_ID",
                "KUBERNETES_SERVICE_HOST",
            )
            if not env.get(name)
        ]
        if missing:
            raise ReportConfigError(
                f"--report kube: environment variable(s) {', '.join(missing)} not set"
            )
        host = env["KUBERNETES_SERVICE_HOST"]
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # An IPv6 address needs brackets in a URL.
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        sa_dir = env.get("NAS_BOHB_SERVICEACCOUNT_DIR") or DEFAULT_SERVICEACCOUNT_DIR
        ca_path = os.path.join(sa_dir, "ca.crt")
        return cls(
            api_url=f"https://{host}:{port}",
            namespace=env["NAS_BOHB_SEARCH_NAMESPACE"],
            search=env["NAS_BOHB_SEARCH_NAME"],
            trial_id=env["NAS_BOHB_TRIAL_ID"],
            attempt=_env_number(env, "NAS_BOHB_TRIAL_ATTEMPT", 1, int),
            token_path=os.path.join(sa_dir, "token"),
            ca_path=ca_path if os.path.exists(ca_path) else None,
            interval_seconds=_env_number(env, "NAS_BOHB_REPORT_INTERVAL", 10.0, float),
            deadline_seconds=_env_number(env, "NAS_BOHB_REPORT_DEADLINE", 120.0, float),
            termination_log=env.get("NAS_BOHB_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG,
        )

    @property
    def status_url(self) -> str:
        ns = urllib.parse.quote(self.namespace, safe="")
        name = urllib.parse.quote(self.search, safe="")
        return f"{self.api_url}/{API_PATH}/namespaces/{ns}/{PLURAL}/{name}/status"


def _env_number(env: Mapping[str, str], name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError as error:
        raise ReportConfigError(f"environment variable {name}={raw!r} is not a number") from error
    if not math.isfinite(float(value)) or value < 0:
        raise ReportConfigError(f"environment variable {name}={raw!r} must be >= 0")
    return value


class PatchError(Exception):
    """One merge patch failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class _Stats:
    sent: int = 0
    failed: int = 0
    retries: int = 0
    last_error: str = ""


class KubeReporter:
    """Writes a trial's progress and result into its ``JointSearch`` status.

    ``send`` is injectable for tests; by default it is an HTTPS merge patch with the
    service-account token (re-read on every call, since projected tokens rotate).
    ``ssl_context`` lets one process that reports for many trials (a benchmark) share one.
    """

    def __init__(
        self,
        target: KubeTarget,
        *,
        send: Callable[[bytes], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = target
        self.stats = _Stats()
        self._send = send or self._http_patch
        self._sleep = sleep
        self._ssl = ssl_context
        self._preconditions = True
        self._pending: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1)
        self._last_progress = -math.inf
        self._closed = False
        self._lock = threading.Lock()  # Serialises writes: progress never overtakes result.
        self._thread = threading.Thread(target=self._progress_loop, daemon=True)
        self._thread.start()

    # -- what the trainer calls ------------------------------------------------------------

    def on_progress(self, progress: Mapping[str, Any]) -> None:
        """Queue a progress write (the newest wins); returns at once."""
        try:
            now = time.monotonic()
            if self._closed or now - self._last_progress < self.target.interval_seconds:
                return
            self._last_progress = now
            entry = progress_entry(progress)
            with contextlib.suppress(queue.Empty):
                self._pending.get_nowait()  # Drop an older progress nobody has sent yet.
            self._pending.put_nowait(entry)
        except Exception as error:
            logger.warning("Trial %s: progress not queued: %s.", self.target.trial_id, error)

    def on_result(self, record: Mapping[str, Any]) -> None:
        """Write the termination message, then the result, retrying until the deadline."""
        try:
            self._closed = True
            entry = result_entry(record)
            entry["attempt"] = self.target.attempt
            # First, and whatever becomes of the patch: the operator's fallback.
            self._write_termination_message(entry)
            self._stop_progress()
            body = self._body({"result": entry})
            if self._deliver(body, deadline=self.target.deadline_seconds):
                logger.info("Trial %s: result reported to %s/%s.", self.target.trial_id,
                            self.target.namespace, self.target.search)
            else:
                logger.error(
                    "Trial %s: result could not be reported (%s); the operator will count"
                    " the trial as failed.", self.target.trial_id, self.stats.last_error,
                )
        except Exception as error:
            logger.error("Trial %s: result not reported: %s.", self.target.trial_id, error)

    def _write_termination_message(self, entry: Mapping[str, Any]) -> None:
        path = self.target.termination_log
        if not path:
            return
        trial_id = self.target.trial_id
        try:
            data = termination_message(trial_id, entry)
            if data is None:
                logger.warning("Trial %s: the result does not fit in a termination message; "
                               "none written.", trial_id)
                return
            write_termination_message(path, data)
            logger.info("Trial %s: result written to the termination message %s (%d bytes).",
                        trial_id, path, len(data))
        except Exception as error:
            logger.warning("Trial %s: termination message not written to %s: %s.", trial_id,
                           path, error)

    # -- delivery ----------------------------------------------------------------------

    def _body(self, entry: Mapping[str, Any]) -> bytes:
        patch = {"status": {"trials": {self.target.trial_id: entry}}}
        # allow_nan=False is the last guard: json_safe has already replaced non-finite floats.
        return json.dumps(patch, allow_nan=False, separators=(",", ":")).encode()

    def _progress_loop(self) -> None:
        while True:
            entry = self._pending.get()
            if entry is None:
                return
            entry["attempt"] = self.target.attempt
            # Progress is best effort: a short deadline, and a newer one replaces it anyway.
            self._deliver(self._body({"progress": entry}), deadline=min(
                self.target.interval_seconds, self.target.deadline_seconds))

    def _stop_progress(self) -> None:
        with contextlib.suppress(queue.Empty):
            self._pending.get_nowait()
        self._pending.put(None)
        self._thread.join(timeout=self.target.deadline_seconds)

    def _deliver(self, body: bytes, *, deadline: float) -> bool:
        """Send ``body``, retrying with exponential backoff; ``True`` once accepted."""
        with self._lock:
            start = time.monotonic()
            delay = 0.5
            while True:
                try:
                    self._send(body)
                    self.stats.sent += 1
                    return True
                except PatchError as error:
                    self.stats.last_error = str(error)
                    elapsed = time.monotonic() - start
                    if not error.retryable or elapsed + delay > deadline:
                        self.stats.failed += 1
                        logger.warning("Trial %s: status patch failed: %s.",
                                       self.target.trial_id, error)
                        return False
                    # Full jitter: trainers that finish together must not retry together.
                    pause = random.uniform(0.5 * delay, delay)
                    logger.info("Trial %s: status patch failed (%s); retrying in %.1f s.",
                                self.target.trial_id, error, pause)
                    self.stats.retries += 1
                    self._sleep(pause)
                    delay = min(delay * 2, 16.0)

    def _http_patch(self, body: bytes) -> None:
        """One HTTPS merge patch of the status subresource, on the current resourceVersion.

        Without a precondition the API server retries a patch that lost a race itself, at
        once and again and again; with hundreds of trainers writing one status, those
        retries crowd out every other request. With the resourceVersion read just before,
        a lost race comes back as a 409 and this trainer backs off with jitter instead.
        (A Role without ``get`` falls back to plain patches.)
        """
        token = self._token()
        version = self._current_version(token) if self._preconditions else None
        if version is not None:
            patch = json.loads(body)
            patch["metadata"] = {"resourceVersion": version}
            body = json.dumps(patch, allow_nan=False, separators=(",", ":")).encode()
        self._request("PATCH", token, body)

    def _token(self) -> str:
        try:
            with open(self.target.token_path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as error:
            raise PatchError(f"cannot read token {self.target.token_path}: {error}",
                             retryable=False) from error

    def _current_version(self, token: str) -> str | None:
        try:
            current = json.loads(self._request("GET", token, None))
        except PatchError as error:
            if "HTTP 403" in str(error):
                self._preconditions = False
                return None
            raise
        return str(current.get("metadata", {}).get("resourceVersion") or "") or None

    def _request(self, method: str, token: str, body: bytes | None) -> bytes:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=self.target.ca_path)
        headers = {"Accept": "application/json", "Authorization": f"Bearer {token}",
                   "User-Agent": "nas-bohb-trainer"}
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
        request = urllib.request.Request(self.target.status_url, data=body, method=method,
                                         headers=headers)
        try:
            # Longer than the API server's own request timeout (60 s): giving up earlier would
            # only send the same write again while the first is still being applied.
            with urllib.request.urlopen(request, timeout=65, context=self._ssl) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise PatchError(f"HTTP {error.code}: {detail}",
                             retryable=error.code in _RETRYABLE_STATUS) from error
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise PatchError(f"connection failed: {error}", retryable=True) from error
