"""The shared record of handled event ids: a JetStream KV bucket all listeners consult.

Listeners sharing a durable consumer split its messages; a message redelivered after its
listener died (or outlived ``ack_wait``) may land on another listener. So that it is not
handled again there, every listener writes the id of each event it handled to a KV bucket
(key: stream, durable and event id, each encoded) before acknowledging the message, and
looks the id up there before handling a redelivered message its own memory does not know.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import KeyValueConfig, StorageType

from ._exceptions import NatsError, StreamConfigError

if TYPE_CHECKING:
    import asyncio

    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["DEFAULT_BUCKET", "SharedRecord", "check_bucket", "record_key"]

logger = structlog.get_logger("lifecycle.nats")

DEFAULT_BUCKET = "lifecycle_handled"
"""The KV bucket where listeners record the events they handled, unless told otherwise."""

_BUCKET = re.compile(r"[A-Za-z0-9_-]+")
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def check_bucket(value: str) -> str:
    """``value`` if it is a KV bucket name (``[A-Za-z0-9_-]+``), else a ``ValueError``."""
    if not isinstance(value, str) or _BUCKET.fullmatch(value) is None:
        raise ValueError(
            f"handled_bucket must be a KV bucket name ([A-Za-z0-9_-]+) or false, not {value!r}"
        )
    return value


def _token(text: str) -> str:
    # KV keys allow [-/_=.a-zA-Z0-9]; '.' separates our parts. Every UTF-8 byte outside
    # [A-Za-z0-9_-] becomes =XX, the empty string a lone '=': one token, reversible.
    if not text:
        return "="
    return "".join(chr(b) if b in _PLAIN else f"={b:02X}" for b in text.encode())


def record_key(stream: str, durable: str, event_id: str) -> str:
    """The KV key under which ``durable`` on ``stream`` records that it handled ``event_id``.

    ``stream.durable.event_id``, each part made one key token: every UTF-8 byte outside
    ``[A-Za-z0-9_-]`` becomes ``=XX`` (upper-case hex), the empty string ``=``.
    """
    return f"{_token(stream)}.{_token(durable)}.{_token(event_id)}"


class SharedRecord:
    """A KV bucket of handled event ids (value empty, history 1, entries expire after ``ttl``)."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str, timeout: float) -> None:
        self.js = js
        self.kv = kv
        self.bucket = bucket
        self.timeout = timeout

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        bucket: str,
        ttl: float,
        *,
        write_timeout: float,
        memory: bool = False,
    ) -> SharedRecord:
        """The bucket, created (``ttl`` as its max age, history 1) if missing.

        ``write_timeout`` is how long a write may wait for the server's acknowledgement.

        An existing bucket is used as it is; another TTL than ``ttl`` is a warning (the
        bucket is shared by every listener of the server's account, the first one made it).

        Raises:
            StreamConfigError: the bucket's stream exists but is no KV bucket.
        """
        stream = f"KV_{bucket}"
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            try:
                kv = await js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket,
                        description="lifecycle-nats: event ids the listeners handled",
                        history=1,
                        ttl=ttl,
                        storage=StorageType.MEMORY if memory else StorageType.FILE,
                    )
                )
            except nats.js.errors.BadRequestError as exc:
                # Another listener created it at the same moment, with other settings?
                try:
                    info = await js.stream_info(stream)
                except nats.js.errors.NotFoundError:
                    raise StreamConfigError(
                        stream,
                        f"could not create the KV bucket {bucket!r} for the shared record of "
                        f"handled events ({exc}); check the option handled_bucket, or set it "
                        "to false",
                    ) from exc
            else:
                logger.info("created the shared record of handled events", bucket=bucket, ttl=ttl)
                return cls(js, kv, bucket, write_timeout)
        if (info.config.max_msgs_per_subject or 0) < 1:
            raise StreamConfigError(
                stream, f"is not a KV bucket; choose another handled_bucket than {bucket!r}"
            )
        have = info.config.max_age or 0.0
        if abs(have - ttl) > 0.001:
            logger.warning(
                "the shared record of handled events keeps ids for another time than handled_ttl",
                bucket=bucket,
                bucket_ttl=have or "forever",
                handled_ttl=ttl,
            )
        return cls(js, await js.key_value(bucket), bucket, write_timeout)

    async def contains(self, key: str) -> bool:
        """Whether ``key`` was recorded (and has not expired).

        Raises:
            NatsError: the bucket could not be read; nothing may be concluded.
        """
        try:
            await self.kv.get(key, validate_keys=False)
        except nats.js.errors.KeyNotFoundError:
            return False
        except (nats.errors.Error, OSError) as exc:
            raise self._failed("read", exc) from exc
        return True

    async def send(self, key: str) -> asyncio.Future[Any]:
        """Send the write of ``key`` (as ``KeyValue.put`` does); :meth:`stored` awaits it.

        Several writes in flight at once cost about one round trip, not one each.

        Raises:
            NatsError: the write could not be sent.
        """
        try:
            return await self.js.publish_async(f"$KV.{self.bucket}.{key}", b"")
        except (nats.errors.Error, OSError) as exc:
            raise self._failed("write", exc) from exc

    async def stored(self, sent: asyncio.Future[Any]) -> None:
        """Wait (at most ``timeout``) until the bucket acknowledged a write :meth:`send` sent.

        Raises:
            NatsError: no acknowledgement in time, or an error instead.
        """
        try:
            with anyio.fail_after(self.timeout):
                await sent
        except TimeoutError as exc:
            raise self._failed("write", f"no acknowledgement in {self.timeout:g} s") from exc
        except (nats.errors.Error, OSError) as exc:
            raise self._failed("write", exc) from exc

    async def add(self, key: str) -> None:
        """Record ``key``, once the bucket has stored it (:meth:`send`, then :meth:`stored`)."""
        await self.stored(await self.send(key))

    def _failed(self, what: str, exc: BaseException | str) -> NatsError:
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        return NatsError(
            f"could not {what} the shared record of handled events (KV bucket "
            f"{self.bucket!r}: {reason}); the message is not "
            "acknowledged and will be delivered again"
        )
