"""The errors an operator has to act on (a backend refuses the credentials, a broker never came
up): the message is one line naming the cause, where, and the fix, so ``cami`` prints it as it is
(no exception type, no traceback). Backends raise subclasses of their own errors that are also
:class:`OperatorError`, so callers that catch ``EventLogError`` or ``BlobStoreError`` still do."""

from __future__ import annotations


class OperatorError(Exception):
    """The configured backend cannot be used until someone changes something outside the code.

    ``str(error)`` is one line for the operator: what failed and where (an address, a bucket),
    why, and what to do. It never carries a secret."""
