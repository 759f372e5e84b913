"""The audit trail read model: :mod:`~projections.audit.fold` (the projection and its hash chains),
:mod:`~projections.audit.queries` (what auditors read) and :mod:`~projections.audit.verify` (chain
and log verification). This package imports none of them."""
