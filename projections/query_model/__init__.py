"""The query model: the rows DICOM queries read, kept in a row store made for B-tree look-ups.

QIDO-RS, C-FIND and the study lists are point look-ups (a patient, an accession number, a study),
prefix matches on names, date ranges and pages of the newest studies. They are answered from
study-, series- and instance-level rows kept exact by the fold, with an index per query shape,
instead of aggregating instance rows at query time (the measurements and the choice are in
docs/performance.md, "Query model"). Analytics, monitoring and audit stay in ClickHouse.

* :mod:`~projections.query_model.fold`: the projection (``query-model``: the archive index's
  pure fold, event in, rows out) and the pure summary of a study from its newest instances;
* :mod:`~projections.query_model.store`: the row store behind one small interface
  (:class:`~projections.query_model.store.QueryStore`; SQLite embedded, PostgreSQL shared) and the
  sink that writes the fold's rows into it;
* :mod:`~projections.query_model.find`: the ONE read module: QIDO-RS/C-FIND matching at every
  level and the study lists.

Import the module you need; this package imports none of them (no circles through it).
"""
