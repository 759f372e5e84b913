"""How far behind the log each projection is (consumer lag), for ``cami status`` and monitoring.

Lag is read from the committed offsets of the consumer group the runner really uses (which
runner that is follows from the warehouse: see ``api.bootstrap.Archive.embedded_warehouse``):

* the embedded runner (:class:`streams.processing.EmbeddedRunner`): one group per projection,
  ``cami.<name>`` (:func:`streams.processing.group_id`);
* the Faust workers (``cami workers`` on Kafka with a ClickHouse server): one group for all projections, the app id
  (:data:`streams.faust_app.DEFAULT_APP_ID`). Faust commits a partition's offset only once every
  agent reading it has acknowledged the event, so on Kafka the lag of a projection is the lag of
  the shared group on the topics that projection reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from streams.log import EventLog
from streams.processing import Processor, group_id

#: the Faust app id (consumer group of ``cami workers``); kept equal to streams.faust_app's
#: DEFAULT_APP_ID without importing Faust where only the lag is wanted
FAUST_GROUP = "cami-processors"


def runner_group(event_log: EventLog) -> Callable[[Processor], str]:
    """The group id the archive's runner uses for a processor on this log's backend."""
    if event_log.backend == "kafka":
        return lambda _processor: FAUST_GROUP
    return group_id


def projection_lag(
    event_log: EventLog,
    processors: Sequence[Processor],
    group_for: Callable[[Processor], str] | None = None,
) -> dict[str, dict[str, int]]:
    """Per projection and topic, the events appended but not yet committed by its group."""
    group_of = group_for or runner_group(event_log)
    return {
        processor.name: {topic: event_log.lag(group_of(processor), topic) for topic in processor.topics}
        for processor in processors
    }
