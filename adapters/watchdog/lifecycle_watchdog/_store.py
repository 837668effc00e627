"""Where the run table lives between watchdogs: a JetStream key-value bucket (or memory).

Every write is a compare-and-set on the key's revision: read the stored record, let the
judge's ``merge`` decide what to write (or refuse: another watchdog got there first),
then update *only if the revision is still the one read*. Two watchdogs racing to declare
the same run lost both read ``running``; one update lands, the other fails on the
revision, reads again, finds ``lost`` and stands down. That is what makes a verdict
exactly-once, across restarts and replicas.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

from ._model import RunRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["JetStreamStore", "MemoryStore", "RunStore"]

CHECKPOINT_KEY = "checkpoint"


class RunStore(Protocol):
    """The shared run table, with compare-and-set writes."""

    async def transition(
        self,
        key: str,
        merge: Callable[[RunRecord | None], RunRecord | None],
        *,
        create_first: bool = False,
    ) -> tuple[bool, RunRecord | None]:
        """Write ``merge(stored)`` if the key did not change meanwhile; retry until it holds.

        Returns ``(True, written)``, or ``(False, stored)`` when ``merge`` refused.
        ``create_first``: the key most likely does not exist yet; try creating it
        before reading.
        """
        ...

    async def claim(self, key: str, value: dict[str, Any]) -> bool:
        """Create ``key`` if it does not exist; ``True`` for the one caller that created it."""
        ...

    async def get(self, key: str) -> RunRecord | None: ...

    async def records(self) -> list[RunRecord]: ...

    async def checkpoint(self) -> tuple[int, float] | None:
        """The stream sequence and time up to which the table is known to be written."""
        ...

    async def save_checkpoint(self, seq: int, time: float) -> None: ...


class MemoryStore:
    """A :class:`RunStore` in a dict, for one process (tests, a single local watchdog).

    .. versionadded:: 0.2
    """

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self._revision = 0

    def _put(self, key: str, value: bytes) -> None:
        self._revision += 1
        self.data[key] = (value, self._revision)

    async def transition(
        self,
        key: str,
        merge: Callable[[RunRecord | None], RunRecord | None],
        *,
        create_first: bool = False,
    ) -> tuple[bool, RunRecord | None]:
        stored = await self.get(key)
        new = merge(stored)
        if new is None:
            return False, stored
        self._put(key, json.dumps(new.to_dict()).encode())
        return True, new

    async def claim(self, key: str, value: dict[str, Any]) -> bool:
        if key in self.data:
            return False
        self._put(key, json.dumps(value).encode())
        return True

    async def get(self, key: str) -> RunRecord | None:
        found = self.data.get(key)
        return None if found is None else RunRecord.from_dict(json.loads(found[0]))

    async def records(self) -> list[RunRecord]:
        return [
            RunRecord.from_dict(json.loads(value))
            for key, (value, _) in self.data.items()
            if key.startswith("run.")
        ]

    async def checkpoint(self) -> tuple[int, float] | None:
        found = self.data.get(CHECKPOINT_KEY)
        if found is None:
            return None
        data = json.loads(found[0])
        return int(data["seq"]), float(data["time"])

    async def save_checkpoint(self, seq: int, time: float) -> None:
        self._put(CHECKPOINT_KEY, json.dumps({"seq": seq, "time": time}).encode())


class JetStreamStore:
    """A :class:`RunStore` in a JetStream key-value bucket (one key per run).

    Use :meth:`open`, which creates the bucket if it is missing (file storage, one
    revision per key, entries expire after ``ttl`` seconds so ended runs do not pile up).

    .. versionadded:: 0.2
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str = "lifecycle_runs", *, ttl: float = 7 * 86400
    ) -> JetStreamStore:
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=1, ttl=ttl, storage=StorageType.FILE)
            )
        return cls(kv)

    async def _entry(self, key: str) -> tuple[RunRecord | None, int]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, entry.revision or 0
        return RunRecord.from_dict(json.loads(entry.value)), entry.revision or 0

    async def transition(
        self,
        key: str,
        merge: Callable[[RunRecord | None], RunRecord | None],
        *,
        create_first: bool = False,
    ) -> tuple[bool, RunRecord | None]:
        # A run's first record: try to create it first, without a read.
        new = merge(None) if create_first else None
        if new is not None:
            try:
                await self.kv.create(key, json.dumps(new.to_dict()).encode())
            except KeyWrongLastSequenceError:
                pass  # it exists: read it and let merge decide
            else:
                return True, new
        while True:
            stored, revision = await self._entry(key)
            new = merge(stored)
            if new is None:
                return False, stored
            payload = json.dumps(new.to_dict()).encode()
            try:
                if revision:
                    await self.kv.update(key, payload, last=revision)
                else:
                    await self.kv.create(key, payload)
            except KeyWrongLastSequenceError:
                continue  # someone wrote meanwhile: read again and let merge decide
            return True, new

    async def claim(self, key: str, value: dict[str, Any]) -> bool:
        try:
            await self.kv.create(key, json.dumps(value).encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def get(self, key: str) -> RunRecord | None:
        return (await self._entry(key))[0]

    async def records(self) -> list[RunRecord]:
        records: list[RunRecord] = []
        watcher = await self.kv.watch("run.>", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break  # the initial values are all in
                if entry.value:
                    records.append(RunRecord.from_dict(json.loads(entry.value)))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
        return records

    async def checkpoint(self) -> tuple[int, float] | None:
        try:
            entry = await self.kv.get(CHECKPOINT_KEY)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        data = json.loads(entry.value)
        return int(data["seq"]), float(data["time"])

    async def save_checkpoint(self, seq: int, time: float) -> None:
        # A plain put: a lagging replica may write an older checkpoint, which only makes
        # the next restart replay a little more. Never less.
        await self.kv.put(CHECKPOINT_KEY, json.dumps({"seq": seq, "time": time}).encode())
