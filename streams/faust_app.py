"""The Faust (faust-streaming) app that runs processors against Kafka.

Topology is declared here; processing is the same :func:`streams.processing.deliver` the
embedded runner calls. Each processor becomes one agent reading its topics as raw bytes
(our Avro codec decodes them, not Faust's serializers). Agents take events in batches and Faust
acknowledges them only after the batch was written by the sink, so offsets are committed after
the rows are durable (at-least-once). A batch that cannot be written is retried inside the agent
with backoff, never raised: Faust acknowledges the events of a crashed agent (and would commit
past them); bad events are set aside as dead letters by :func:`streams.processing.deliver`.
Several worker processes with the same app id share the partitions between them (Kafka consumer
group = app id). Topic names and the app id go through the log's :class:`~streams.topics.TopicNames`
(``topic_prefix``), so the workers read the topics the archive writes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import faust

from streams.processing import SETTLE_AFTER, Processor, Sink, Source, backoff, deliver
from streams.topics import TopicNames

log = logging.getLogger("cami.faust")

#: the consumer group of the projection workers
DEFAULT_APP_ID = "cami-processors"


def faust_broker_url(bootstrap: str) -> str:
    """Faust's broker URL for a comma-separated bootstrap list."""
    return ";".join(f"kafka://{server}" for server in bootstrap.split(","))


def _agent(processor: Processor, sink: Sink, names: TopicNames) -> Callable[[Any], Coroutine[Any, Any, None]]:
    async def agent(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        batches: AsyncIterator[Sequence[Any]] = stream.take_events(500, within=0.2)
        async for events in batches:
            records = [
                (
                    Source(names.logical(e.message.topic), e.message.partition, e.message.offset, e.message.value),
                    e.message.value,
                )
                for e in events
            ]
            failures = 0
            while True:
                settle = failures >= SETTLE_AFTER
                try:
                    # sinks do blocking I/O; keep the event loop (heartbeats, fetches) responsive
                    attempt = functools.partial(deliver, processor, sink, records, settle=settle)
                    await loop.run_in_executor(None, attempt)
                    break
                except Exception:
                    failures += 1
                    wait = backoff(failures)
                    log.exception("%s: batch not applied; retrying in %.2f s", processor.name, wait)
                    await asyncio.sleep(wait)

    agent.__name__ = f"agent_{processor.name}"
    return agent


def create_app(
    bootstrap: str,
    bindings: Sequence[tuple[Processor, Sink]],
    *,
    app_id: str = DEFAULT_APP_ID,
    datadir: Path | None = None,
    names: TopicNames | None = None,
) -> faust.App:
    """The app; ``names``: the event log's (``KafkaEventLog.names``), default the archive's own."""
    names = names or TopicNames()
    app = faust.App(
        names.physical(app_id),
        broker=faust_broker_url(bootstrap),
        datadir=str(datadir) if datadir else None,
        web_enabled=False,
        # our topics are created by the archive (retention forever); Faust must not redeclare them
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        broker_commit_every=100,
        broker_commit_interval=1.0,
    )
    for processor, sink in bindings:
        topic = app.topic(
            *(names.physical(t) for t in processor.topics),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        app.agent(topic, name=processor.name)(_agent(processor, sink, names))
    return app


def run_worker(app: faust.App, loglevel: str = "warning") -> None:
    """Run the app's worker in this process until it is stopped (SIGTERM/SIGINT).

    The process keeps its own log handlers (text or JSON lines, as ``cami`` set them up): left
    alone, the worker would replace them with coloured ones of its own. ``loglevel`` is the level
    of the Faust, mode and aiokafka loggers."""
    ours = list(logging.root.handlers)
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(loglevel.upper())
    app.conf.loghandlers = ours  # put back after the worker's configuration
    worker = faust.Worker(
        app,
        loglevel=loglevel,
        quiet=True,
        # an incremental configuration that names nothing changes nothing
        logging_config={"version": 1, "incremental": True},
    )
    # no terminal spinner: a service's output is read by a journal or a collector, not a person
    # (its cursor codes would break JSON lines, and it would hang a handler on the root logger)
    worker.spinner = None
    worker.execute_from_commandline()
