"""The monitoring read model: :mod:`~projections.monitoring.fold` (the projection and its tables) and
:mod:`~projections.monitoring.queries` (what the dashboards read). This package imports neither."""
