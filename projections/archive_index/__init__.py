"""The archive index read model: what the archive holds, and every read of it.

* :mod:`~projections.archive_index.fold`: the projection (event in, rows out) and its tables;
* :mod:`~projections.archive_index.matching`: DICOM matching values, parsed and checked;
* :mod:`~projections.archive_index.views`: the newest-version rule, series/instance views, the
  stored instances WADO and C-MOVE/C-GET serve, patients and reports;

QIDO-RS/C-FIND matching and the study lists read the query model built from the same fold
(:mod:`projections.query_model.find`).

Import the module you need; this package imports none of them (no circles through it).
"""
