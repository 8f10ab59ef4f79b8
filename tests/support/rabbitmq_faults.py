"""The RabbitMQ fault tests' shared skeletons (tests/reliability/test_rabbitmq_*faults.py).

* :func:`proxied_rabbit_pipeline`: a pipeline on the session vhost whose
  workers deliver through a :class:`FaultProxy`; its topology deleted after.
* :func:`outage_then_back`: /track refuses every request for a while, nothing
  is delivered, then it answers again and every record arrives: the accounting.
* :func:`private_producer`: a ``track`` task publishing to a queue of its own
  on a private node, spooling on failure.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aicm_tasks import create_app
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_topology
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.settings import Settings
from aicm_tasks.tasks import TrackTask
from tests.support.accounting import Accounting
from tests.support.faults import FaultProxy, hold
from tests.support.pipeline import LocalServer
from tests.support.rabbitmq import RabbitVhost
from tests.support.rabbitmq_node import PrivateRabbit
from tests.support.rabbitmq_pipeline import RabbitPipeline, record_messages
from tests.support.tasks import track_of


@pytest.fixture
def proxied_rabbit_pipeline(
    rabbit_pipeline_factory, rabbitmq_vhost: RabbitVhost, local_server: LocalServer
) -> Iterator[tuple[RabbitPipeline, FaultProxy]]:
    """``(pipeline, proxy)``: a pipeline on the session vhost whose workers post to
    /track through a fault proxy (passing through until the test sets a mode)."""
    with FaultProxy(local_server.url) as proxy:
        pipeline: RabbitPipeline = rabbit_pipeline_factory(
            rabbitmq_vhost.url, api_base=proxy.url, delete_at_stop=True
        )
        yield pipeline, proxy


def outage_then_back(
    pipeline: RabbitPipeline,
    proxy: FaultProxy,
    *,
    answer: str,
    seen: int,
    hold_s: float,
    count: int,
    prefix: str,
    scenario: str,
) -> Accounting:
    """With a worker running: /track answers ``answer`` (a proxy mode) to every
    request, ``count`` records are published, and after ``seen`` such answers and
    ``hold_s`` more none is delivered; then /track passes again and every record
    is delivered and the pipeline drains. Returns the accounting (recovery time
    from the fix)."""
    proxy.set(answer)
    messages = record_messages(count, prefix=prefix)
    pipeline.publish(messages)
    wait_until(lambda: proxy.state.counts.get(answer, 0) >= seen, 60, f"the {answer}s seen")
    hold(hold_s)
    assert pipeline.delivered() == 0
    proxy.set("pass")
    fixed = time.monotonic()
    pipeline.wait_delivered(count, timeout_s=120)
    pipeline.wait_drained()
    return pipeline.account(scenario, set(messages), recovery_s=time.monotonic() - fixed)


def private_producer(
    node: PrivateRabbit, tmp_path: Path, *, publish_timeout_s: float
) -> tuple[RabbitNames, TrackTask]:
    """A queue of its own declared on ``node`` (the shared delay prefix: the node is
    the test's alone) and a ``track`` task publishing to it, spooling under ``tmp_path``."""
    names = RabbitNames(queue=f"t.{uuid.uuid4().hex[:8]}.tracking")
    declare_topology(node.url, names)
    settings = Settings(
        broker_url=node.url,
        queue=names.queue,
        spool_dir=tmp_path / "spool",
        publish_timeout_s=publish_timeout_s,
    )
    return names, track_of(create_app(settings))
