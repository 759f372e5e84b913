"""Reports: being split into rules, documents, store, fold and service."""

from ingest.reports.rules import *  # noqa: F403  (transitional: the next commit splits the module)
