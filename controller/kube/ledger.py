"""The engine's ledger, kept in ConfigMaps owned by the ``JointSearch``.

The engine (:mod:`controller.engine`) is rebuilt by replaying an append-only list of
events: configurations sampled, trials started, finished and released. In the cluster
those events live in ConfigMaps named ``<search>-ledger-<uid>-<NNNN>``, each a JSON-lines
document of at most :data:`SHARD_BYTES`, owned by the search (garbage-collected with it)
and labelled by it. That keeps the resource's status small (a 1,000-trial search holds
megabytes of records and learning curves, etcd's object limit is 1.5 MiB) while every
finished result stays in the cluster.

Durability is a group commit. :meth:`ConfigMapLedger.append` only buffers; the operator
calls :meth:`ConfigMapLedger.flush` before it lets any decision leave the process (before
it creates a Job for a started trial, deletes one, or removes a reported result from the
status). An event lost in a crash was therefore never acted on: after the restart the
engine simply takes that decision again, and a result that was not yet flushed is still
in the status to be read again. One flush per reconcile pass writes all events of the
pass in one or two requests, instead of one request per event.

Writes replace the newest shard with its ``resourceVersion``: if two operators ever write
one search, the second gets a conflict (:class:`LedgerConflict`) instead of silently
interleaving, and rebuilds its engine from what is stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.kube import GROUP, template
from controller.kube.client import ApiError, KubeClient, collection_path, object_path

logger = logging.getLogger(__name__)

#: Target size of one ConfigMap shard (ConfigMaps hold at most 1 MiB).
SHARD_BYTES = 64 * 1024
#: A single event larger than this cannot be stored (the trainer thins its record first).
MAX_EVENT_BYTES = 900 * 1024
DATA_KEY = "events.jsonl"
SHARD_LABEL = f"{GROUP}/ledger-shard"


class LedgerError(Exception):
    """The ledger cannot be read or written."""


class LedgerConflict(LedgerError):
    """Someone else wrote the ledger since we read it: rebuild from what is stored."""


@dataclass
class _Shard:
    index: int
    name: str
    resource_version: str | None
    text: str  # JSON lines, each ending in "\n"


class ConfigMapLedger:
    """An engine ledger (``append``/``read_all``) stored in owned ConfigMaps."""

    def __init__(self, client: KubeClient, owner: Mapping[str, Any], *,
                 shard_bytes: int = SHARD_BYTES) -> None:
        meta = owner["metadata"]
        self._client = client
        self._owner = owner
        self._namespace: str = meta["namespace"]
        self._search: str = meta["name"]
        self._uid: str = meta["uid"]
        self._shard_bytes = shard_bytes
        self._lock = threading.Lock()  # The engine appends from its sampler thread too.
        self._events: list[dict[str, Any]] = []
        self._flushed = 0  # self._events[:self._flushed] are stored.
        self._shards: list[_Shard] = []
        self._flush_lock = asyncio.Lock()

    # -- the engine's Ledger protocol ----------------------------------------------------------

    def append(self, event: Mapping[str, Any]) -> None:
        """Buffer one event; it becomes durable at the next :meth:`flush`."""
        line = json.dumps(event, allow_nan=False, separators=(",", ":"))
        if len(line) > MAX_EVENT_BYTES:
            raise LedgerError(f"search {self._namespace}/{self._search}: ledger event "
                              f"{event.get('event')!r} is {len(line)} bytes, more than "
                              f"{MAX_EVENT_BYTES}")
        with self._lock:
            self._events.append(json.loads(line))

    def read_all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._events]

    # -- storage --------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events appended but not yet stored."""
        with self._lock:
            return len(self._events) - self._flushed

    @property
    def count(self) -> int:
        """Events appended so far (stored or not)."""
        with self._lock:
            return len(self._events)

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    @property
    def stored_bytes(self) -> int:
        return sum(len(s.text) for s in self._shards)

    def _path(self, name: str | None = None) -> str:
        if name is None:
            return collection_path("v1", "configmaps", self._namespace)
        return object_path("v1", "configmaps", self._namespace, name)

    def _shard_name(self, index: int) -> str:
        # The uid keeps a re-created search of the same name off its predecessor's shards.
        return f"{self._search[:200]}-ledger-{self._uid[:8]}-{index:04d}"

    async def load(self) -> int:
        """Read every stored shard of this search (this uid); returns the event count."""
        items = await self._client.list(self._path(),
                                        template.search_selector(self._search, "ledger"))
        shards = []
        for item in items:
            meta = item.get("metadata") or {}
            owners = meta.get("ownerReferences") or []
            if not any(o.get("uid") == self._uid for o in owners):
                continue  # A ledger of an earlier search with the same name, awaiting GC.
            try:
                index = int((meta.get("labels") or {})[SHARD_LABEL])
            except (KeyError, ValueError) as error:
                raise LedgerError(f"ConfigMap {meta.get('name')}: no valid {SHARD_LABEL} "
                                  "label") from error
            text = (item.get("data") or {}).get(DATA_KEY, "")
            shards.append(_Shard(index, meta["name"], meta.get("resourceVersion"), text))
        shards.sort(key=lambda s: s.index)
        if [s.index for s in shards] != list(range(len(shards))):
            raise LedgerError(f"search {self._namespace}/{self._search}: ledger shards "
                              f"{[s.index for s in shards]} are not contiguous")
        events = []
        for shard in shards:
            for number, line in enumerate(shard.text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    events.append(json.loads(line))
                except ValueError as error:
                    raise LedgerError(f"ConfigMap {shard.name} line {number}: not JSON "
                                      f"({error})") from error
        with self._lock:
            self._shards = shards
            self._events = events
            self._flushed = len(events)
        return len(events)

    async def flush(self) -> int:
        """Store every buffered event; returns how many were written.

        On an error the events stay buffered and the next flush tries again.
        """
        async with self._flush_lock:
            return await self._flush()

    async def _flush(self) -> int:
        with self._lock:
            pending = self._events[self._flushed:]
        if not pending:
            return 0
        lines = [json.dumps(e, allow_nan=False, separators=(",", ":")) + "\n" for e in pending]
        # Fill the newest shard up to the target size, then open new ones.
        groups: list[list[str]] = [[]]
        # Group 0 extends the newest shard; with no shard yet it stays empty.
        room = self._shard_bytes - len(self._shards[-1].text) if self._shards else 0
        for line in lines:
            if len(line) > room and (groups[-1] or room < self._shard_bytes):
                groups.append([])
                room = self._shard_bytes
            groups[-1].append(line)
            room -= len(line)
        for number, group in enumerate(groups):
            if not group:
                continue
            if number == 0 and self._shards:
                await self._write_tail("".join(group))
            else:
                await self._create_shard("".join(group))
            with self._lock:
                self._flushed += len(group)  # Stored: a later failure must not repeat it.
        return len(pending)

    async def _write_tail(self, more: str) -> None:
        tail = self._shards[-1]
        body = self._shard_body(tail.index, tail.text + more)
        body["metadata"]["resourceVersion"] = tail.resource_version
        try:
            stored = await self._client.replace(self._path(tail.name), body)
        except ApiError as error:
            if error.conflict or error.not_found:
                raise LedgerConflict(f"ConfigMap {tail.name} changed under us: "
                                     f"{error.message}") from error
            raise
        tail.text += more
        tail.resource_version = stored["metadata"]["resourceVersion"]

    async def _create_shard(self, text: str) -> None:
        index = len(self._shards)
        body = self._shard_body(index, text)
        try:
            stored = await self._client.create(self._path(), body)
        except ApiError as error:
            if error.conflict:
                raise LedgerConflict(f"ConfigMap {body['metadata']['name']} exists "
                                     "already") from error
            raise
        self._shards.append(_Shard(index, body["metadata"]["name"],
                                   stored["metadata"]["resourceVersion"], text))

    def _shard_body(self, index: int, text: str) -> dict[str, Any]:
        labels = {**template.search_labels(self._search, "ledger"), SHARD_LABEL: str(index)}
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self._shard_name(index),
                "namespace": self._namespace,
                "labels": labels,
                "ownerReferences": [template.owner_reference(self._owner)],
            },
            "data": {DATA_KEY: text},
        }
