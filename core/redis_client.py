"""One Redis client for the whole app: a single server or a Redis Cluster, told apart when it connects.

``REDIS_URL`` stays an ordinary ``redis://`` (or ``rediss://``) URL either way: the server is asked
``INFO cluster`` once, and a ``cluster_enabled:1`` answer gets a cluster client, which sends each
command to the node that holds its key's slot and splits multi-key commands (``DEL a b c``) by slot.
The scheme ``redis+cluster://`` (``rediss+cluster://``) says "cluster" without asking, for a cluster
that may be unreachable when the process starts: without it, an unreachable server is taken for a
single one (the cache works without Redis meanwhile; a restart picks the right client).
"""

from __future__ import annotations

import logging
import time
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

__all__ = ["REDIS_ERRORS", "Outage", "RedisClient", "is_cluster", "open_redis", "packed", "ping", "send"]

log = logging.getLogger("persona_runtime.redis")

RedisClient: TypeAlias = Redis | RedisCluster

# What a Redis call raises when the server (or a cluster node) is out of reach or misbehaves: the cluster
# client's own errors ("no reachable node", "slot not covered") do not derive from RedisError.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class Outage:
    """Whether to try Redis now, for one use of it: after a failure, one try every ``retry_after`` seconds
    while the others do without. The outage is logged once, on ``logger``, and so is its end.

    ``use`` names the use (``rate limits``), ``meanwhile`` what happens without Redis, ``after`` what
    happens again once it answers.
    """

    __slots__ = ("_after", "_down_since", "_logger", "_meanwhile", "_next_try", "_use", "retry_after")

    def __init__(
        self, logger: logging.Logger, use: str, *, meanwhile: str, after: str, retry_after: float = 1.0
    ) -> None:
        self._logger = logger
        self._use = use
        self._meanwhile = meanwhile
        self._after = after
        self.retry_after = retry_after
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def usable(self) -> bool:
        """Up, or down long enough that this caller is the one to try again."""
        if self._down_since is None:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self.retry_after
        return True

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._logger.warning(
                "Redis unavailable for %s (%s); %s until it is back", self._use, type(exc).__name__, self._meanwhile
            )
            self._down_since = now
        self._next_try = now + self.retry_after

    def recovered(self) -> None:
        if self._down_since is not None:
            self._logger.warning(
                "Redis is reachable again after %.1fs; %s", time.monotonic() - self._down_since, self._after
            )
            self._down_since = None


def packed(*args: bytes | str | int) -> bytes:
    """One command in Redis's protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        data = arg if type(arg) is bytes else str(arg).encode()
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)


async def send(client: Redis, commands: list[bytes]) -> list[Any]:
    """Commands already :func:`packed`, written in one go on one pooled connection of a single server's
    client, and their replies (an error reply as its exception).

    For the hot path: redis-py's general command path (its encoder, and with a socket timeout a timer per
    read) costs several times as much CPU as this for a command of many arguments. Bound the call with
    ``asyncio.timeout``; the client should have no socket timeout of its own.
    """
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(b"".join(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        # A call cut short leaves replies unread on the connection: it must not serve anyone again.
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


async def ping(client: RedisClient) -> bool:
    """Redis answers; on a cluster, every primary does (the cluster client's own PING asks one node only)."""
    if isinstance(client, RedisCluster):
        return bool(await client.ping(target_nodes=RedisCluster.PRIMARIES))
    return bool(await client.ping())


async def open_redis(
    url: str,
    *,
    socket_timeout: float | None = 0.5,
    socket_connect_timeout: float | None = 0.5,
    health_check_interval: float = 10,
) -> RedisClient:
    """A client for ``url``: ``RedisCluster`` when the server says it is a cluster node, else ``Redis``.

    The short default timeouts suit the cache, whose every call must cost less than the database read it
    saves; a caller that blocks on purpose (``XREAD BLOCK``) asks for longer ones.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "health_check_interval": health_check_interval,
    }
    scheme, _, rest = url.partition("://")
    if scheme in _CLUSTER_SCHEMES:
        log.info("Redis Cluster (named by the %s:// scheme)", scheme)
        return await _discovered(RedisCluster.from_url(f"{_CLUSTER_SCHEMES[scheme]}://{rest}", **options))
    single = Redis.from_url(url, **options)
    try:
        info = await single.info("cluster")
    except REDIS_ERRORS as exc:
        log.warning(
            "Redis did not answer at start-up (%s); using it as a single server. If REDIS_URL names a Redis "
            "Cluster, write it as redis+cluster://... so that the cluster client is used from the start",
            type(exc).__name__,
        )
        return single
    if not info.get("cluster_enabled"):
        return single
    await single.aclose()
    log.info("Redis Cluster detected (INFO cluster: cluster_enabled:1)")
    return await _discovered(RedisCluster.from_url(url, **options))


async def _discovered(cluster: RedisCluster) -> RedisCluster:
    """The cluster client with its nodes and slots learnt now, at start-up, rather than by the first request
    (or readiness probe) to use it; a cluster out of reach is learnt on first use instead, as before."""
    try:
        await cluster.initialize()
    except REDIS_ERRORS as exc:
        log.warning(
            "Redis Cluster did not answer at start-up (%s); its nodes are looked up on first use", type(exc).__name__
        )
    return cluster
