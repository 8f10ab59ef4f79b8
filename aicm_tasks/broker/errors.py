"""What a broker that did not take a write raises, whichever broker it is.

Callers that fall back (the publisher's spool, a drain, ``aicm-tasks spool
drain``) catch :data:`BROKER_ERRORS` and need not know which broker the URL
chose.
"""

from __future__ import annotations

import redis
from redis.exceptions import RedisClusterException

from aicm_tasks.broker.rabbitmq.connection import RABBIT_ERRORS
from aicm_tasks.errors import RecordsRefusedError

#: Redis's errors, RabbitMQ's (a refused or lost connection, a channel error, a
#: confirm that did not arrive in time), and a publish whose records the broker
#: took only in part (:class:`RecordsRefusedError` names the refused ones).
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    *RABBIT_ERRORS,
    RecordsRefusedError,
)

#: What one shard's Redis raises when it did not answer an operator's reading
#: (redis-py's cluster client raises RedisClusterException, not a RedisError,
#: when no node serves a slot or none can be reached).
SHARD_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


class ClusterUnreachableError(redis.ConnectionError):
    """No node of a Redis Cluster answered when its slot map was read again
    (redis-py raises ``RedisClusterException``, which is not a ``RedisError``:
    see :func:`aicm_tasks.broker.topology.unreachable_as_connection_error`)."""
