"""The RabbitMQ transport: records on a durable quorum queue, confirmed publishes.

Chosen by the broker URL's scheme (``amqp://``, ``amqps://``); the Redis
transport is the rest of :mod:`aicm_tasks.broker`. Design and cited broker
facts: ``docs/design/rabbitmq.md``.

- :mod:`.names`: every queue, exchange and stream name, and their arguments;
- :mod:`.connection`: opening a py-amqp connection from the URL, and the errors
  that mean "the broker did not take it";
- :mod:`.topology`: declaring all of it (a worker's start-up job);
- :mod:`.confirms`: publishing many messages and waiting once for their confirms;
- :mod:`.events`: the messages of the dead-letter and figures streams;
- :mod:`.streams`: reading a stream to its end (a mark appended, then read up to);
- :mod:`.dead_letters`: the dead-letter store (``aicm-tasks dlq``) over its stream;
- :mod:`.figures`, :mod:`.figures_fold`: ``status``, ``monitor`` and the worker's
  gauges, from passive declares and the two streams.
"""
