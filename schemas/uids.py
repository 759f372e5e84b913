"""The one UID grammar of the archive (PS3.5 9.1), for every layer that checks a UID.

A UID is numeric components separated by dots, no component with a leading zero, at most 64
characters. The whole value must match: ``"1.2.3\\n"`` is not a UID (a pattern anchored with
``$`` would let that newline through).
"""

from __future__ import annotations

import re

#: PS3.5 9.1: the longest a UID may be
MAX_UID_LENGTH = 64

_GRAMMAR = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def is_uid(value: str) -> bool:
    """True when ``value`` is exactly one valid UID (no padding, no wildcard, no list)."""
    return len(value) <= MAX_UID_LENGTH and _GRAMMAR.fullmatch(value) is not None
