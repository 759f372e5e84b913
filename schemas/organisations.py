"""The regional directory of organisations: organisation code (an OID) -> full name, short name, region.

Events, users and senders name an organisation by its code; people read names. Every page, the
monitoring endpoints and ``cami status`` show :meth:`OrganisationDirectory.display` of a code: the
short name when the directory knows it, else the code itself behind :data:`UNKNOWN_MARKER`, so an
organisation missing from the directory is visible as such rather than passed off as a name.

A TOML file (``$CAMI_ORGANISATIONS``, default ``$CAMI_HOME/organisations.toml``)::

    [[organisation]]
    code = "1.2.643.5.1.13.13.12.2.50.1001"
    name = "Regional clinical hospital No. 1"   # the full name
    short_name = "RCH 1"                        # optional: the full name when absent
    region = "50"                               # optional

The ``name`` of a ``[[sender]]`` in the senders file completes the directory for organisations
the file does not list (:meth:`OrganisationDirectory.completed_by`); the file wins where both name one.
It lives here, in the shared vocabulary, so the write side and every read model may use it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: put before a code the directory does not know (pages, JSON, ``cami status``)
UNKNOWN_MARKER = "⚠"
#: what the marker means, e.g. as a title attribute on a page
UNKNOWN_TITLE = "not in the regional directory"
MAX_CODE = 64


class OrganisationsFileError(ValueError):
    """The organisations file cannot be read or an entry is wrong (the message names the entry)."""


@dataclass(frozen=True)
class Organisation:
    code: str
    name: str
    short_name: str = ""
    region: str = ""
    #: where the entry came from: ``directory`` (the organisations file) or ``senders``
    source: str = "directory"

    @property
    def label(self) -> str:
        """The name to show where room is short: the short name, else the full name."""
        return self.short_name or self.name


@dataclass(frozen=True)
class OrganisationDirectory:
    organisations: Mapping[str, Organisation] = field(default_factory=dict)

    def lookup(self, code: str | None) -> Organisation | None:
        return self.organisations.get((code or "").strip())

    def display(self, code: str | None) -> str:
        """The organisation's short (else full) name, or the code behind the unknown marker."""
        known = self.lookup(code)
        if known is not None:
            return known.label
        return f"{UNKNOWN_MARKER} {code or ''}".rstrip()

    def describe(self, code: str | None) -> dict[str, Any]:
        """What a page or an endpoint shows of ``code`` (JSON-ready): the code, the name to show
        (:meth:`display`), the full and short names and region when known, and whether it is known."""
        known = self.lookup(code)
        return {
            "code": code,
            "display": self.display(code),
            "name": known.name if known else None,
            "short_name": known.label if known else None,
            "region": (known.region or None) if known else None,
            "known": known is not None,
        }

    def completed_by(self, names: Iterable[tuple[str, str]]) -> OrganisationDirectory:
        """This directory plus (code, name) pairs for codes it does not list (the first name of a
        code wins; empty names are skipped): the senders file's ``[[sender]]`` names."""
        merged = dict(self.organisations)
        for code, name in names:
            code, name = code.strip(), name.strip()
            if code and name and code not in merged:
                merged[code] = Organisation(code, name, source="senders")
        return OrganisationDirectory(merged)

    def __len__(self) -> int:
        return len(self.organisations)


def _text(raw: Mapping[str, Any], key: str, what: str, *, required: bool) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            raise OrganisationsFileError(f"{what}: missing {key!r}")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise OrganisationsFileError(f"{what}: {key} must be a non-empty string")
    if any(ord(ch) < 0x20 for ch in value):
        raise OrganisationsFileError(f"{what}: {key} must not hold control characters")
    return value.strip()


def _organisation(raw: Any, index: int) -> Organisation:
    what = f"organisation #{index + 1}"
    if not isinstance(raw, dict):
        raise OrganisationsFileError(f"{what}: must be a table")
    code = _text(raw, "code", what, required=True)
    if len(code) > MAX_CODE or not all(part.isdigit() for part in code.split(".")):
        raise OrganisationsFileError(f"{what}: code must be an OID (digits and dots, at most {MAX_CODE}), got {code!r}")
    what = f"organisation {code}"
    unknown = sorted(set(raw) - {"code", "name", "short_name", "region"})
    if unknown:  # a misspelt key would silently lose a name
        raise OrganisationsFileError(f"{what}: unknown key(s) {', '.join(unknown)}")
    return Organisation(
        code,
        _text(raw, "name", what, required=True),
        _text(raw, "short_name", what, required=False),
        _text(raw, "region", what, required=False),
    )


def parse_organisations(data: Mapping[str, Any]) -> OrganisationDirectory:
    """The directory in a parsed organisations file (``[[organisation]]`` tables)."""
    unknown = sorted(set(data) - {"organisation"})
    if unknown:
        raise OrganisationsFileError(f"unknown table(s) {', '.join(unknown)}: only [[organisation]] entries")
    entries = data.get("organisation", [])
    if not isinstance(entries, list):
        raise OrganisationsFileError("[[organisation]] must be an array of tables")
    organisations: dict[str, Organisation] = {}
    for index, raw in enumerate(entries):
        organisation = _organisation(raw, index)
        if organisation.code in organisations:
            raise OrganisationsFileError(f"organisation {organisation.code} is listed twice")
        organisations[organisation.code] = organisation
    return OrganisationDirectory(organisations)


def load_organisations(path: Path) -> OrganisationDirectory:
    """Read the organisations file; a missing file is an empty directory (every code unknown)."""
    if not path.exists():
        return OrganisationDirectory()
    try:
        with path.open("rb") as fh:
            return parse_organisations(tomllib.load(fh))
    except tomllib.TOMLDecodeError as exc:
        raise OrganisationsFileError(f"{path}: {exc}") from None
    except OrganisationsFileError as exc:
        raise OrganisationsFileError(f"{path}: {exc}") from None
