"""The transfer agent (``cami agent``): the service at each hospital that sends studies from the local
archive (LAMI) to CAMI.

Studies reach it from the hospital side (its router SCP, a polled PACS, a drop folder, the MIS's small
HTTP endpoint), are spooled and queued durably in its data directory before anything is acknowledged,
wait for their transfer window (pathology-only by default, the full set on request, emergencies at
once) and go to CAMI by C-STORE + storage commitment or STOW-RS over HTTPS. Every step is a transfer
event the agent posts to CAMI's API. The modules:

- :mod:`ingest.agent.config` -- ``agent.toml``
- :mod:`ingest.agent.queue` -- the spool, the study queue and the event outbox (one SQLite file)
- :mod:`ingest.agent.schedule`, :mod:`ingest.agent.rules` -- windows, pathology and regional rules (pure)
- :mod:`ingest.agent.router`, :mod:`ingest.agent.poller`, :mod:`ingest.agent.folder`,
  :mod:`ingest.agent.mis` -- the sources
- :mod:`ingest.agent.pacing`, :mod:`ingest.agent.delivery`, :mod:`ingest.agent.cami_client` -- the link to CAMI
- :mod:`ingest.agent.commitment` -- storage commitment reports awaited by the delivery
- :mod:`ingest.agent.service` -- the running agent, wiring them together
"""
