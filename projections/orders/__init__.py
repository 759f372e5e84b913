"""The orders read model: orders from the MIS, cancellations, performed procedure steps
(fold.py), the worklist and one order's state (queries.py)."""
