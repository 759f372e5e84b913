"""The regional directory of organisations (schemas/organisations.py): the file's grammar, clear
refusals naming the entry, names completed by the senders file, and how a code is shown."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from schemas.organisations import (
    UNKNOWN_MARKER,
    Organisation,
    OrganisationDirectory,
    OrganisationsFileError,
    load_organisations,
    parse_organisations,
)

OKB = "1.2.643.5.1.13.13.12.2.50.1001"
GB2 = "1.2.643.5.1.13.13.12.2.50.1002"
FAP = "1.2.643.5.1.13.13.12.2.50.1099"

FILE = f"""
[[organisation]]
code = "{OKB}"
name = "ГБУЗ МО «Областная клиническая больница»"
short_name = "ОКБ"
region = "50"

[[organisation]]
code = "{GB2}"
name = "Городская больница № 2"
"""


def test_the_file_names_organisations_and_display_prefers_the_short_name(tmp_path: Path) -> None:
    path = tmp_path / "organisations.toml"
    path.write_text(FILE, encoding="utf-8")
    directory = load_organisations(path)
    assert len(directory) == 2
    assert directory.lookup(OKB) == Organisation(OKB, "ГБУЗ МО «Областная клиническая больница»", "ОКБ", "50")
    assert directory.display(OKB) == "ОКБ"
    assert directory.display(f" {GB2} ") == "Городская больница № 2"  # no short name: the full one
    assert directory.describe(GB2) == {
        "code": GB2,
        "display": "Городская больница № 2",
        "name": "Городская больница № 2",
        "short_name": "Городская больница № 2",
        "region": None,
        "known": True,
    }


def test_an_unknown_code_is_shown_as_the_code_behind_the_marker() -> None:
    directory = parse_organisations(tomllib.loads(FILE))
    assert directory.display(FAP) == f"{UNKNOWN_MARKER} {FAP}"
    described = directory.describe(FAP)
    assert described["known"] is False and described["name"] is None
    assert described["display"] == f"⚠ {FAP}" and described["code"] == FAP
    assert directory.lookup(FAP) is None
    assert directory.display("") == UNKNOWN_MARKER


def test_a_missing_file_is_an_empty_directory(tmp_path: Path) -> None:
    directory = load_organisations(tmp_path / "absent.toml")
    assert len(directory) == 0 and directory.display(OKB) == f"⚠ {OKB}"


def test_the_senders_names_complete_the_directory_but_never_override_it() -> None:
    directory = parse_organisations(tomllib.loads(FILE)).completed_by(
        [(OKB, "OKB CT 1"), (FAP, "ФАП Луговой"), (FAP, "ФАП, второй аппарат"), ("1.2.3", "  ")]
    )
    assert directory.display(OKB) == "ОКБ"  # the file wins
    fap = directory.lookup(FAP)
    assert fap is not None and fap.name == "ФАП Луговой" and fap.source == "senders"  # the first name wins
    assert directory.lookup("1.2.3") is None  # an empty name names nothing
    assert directory.display("1.2.3") == "⚠ 1.2.3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[organisation]]\nname = "X"\n', "organisation #1: missing 'code'"),
        (f'[[organisation]]\ncode = "{OKB}"\n', f"organisation {OKB}: missing 'name'"),
        (f'[[organisation]]\ncode = "{OKB}"\nname = ""\n', f"organisation {OKB}: name must be a non-empty string"),
        (f'[[organisation]]\ncode = "{OKB}"\nname = 5\n', f"organisation {OKB}: name must be a non-empty string"),
        ('[[organisation]]\ncode = "OKB"\nname = "X"\n', "organisation #1: code must be an OID"),
        ('[[organisation]]\ncode = "1..2"\nname = "X"\n', "organisation #1: code must be an OID"),
        (f'[[organisation]]\ncode = "{OKB}"\nname = "X"\nshortname = "Y"\n', "unknown key(s) shortname"),
        (
            f'[[organisation]]\ncode = "{OKB}"\nname = "X"\n\n[[organisation]]\ncode = "{OKB}"\nname = "Y"\n',
            f"organisation {OKB} is listed twice",
        ),
        (f'[organisation]\ncode = "{OKB}"\n', "[[organisation]] must be an array of tables"),
        (f'[[organisations]]\ncode = "{OKB}"\n', "unknown table(s) organisations"),
        (f'[[organisation]]\ncode = "{OKB}"\nname = "X\\nY"\n', "name must not hold control characters"),
    ],
)
def test_a_wrong_entry_is_refused_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "organisations.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OrganisationsFileError) as raised:
        load_organisations(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)  # and the file


def test_a_file_that_is_not_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "organisations.toml"
    path.write_text("[[organisation]\ncode = ", encoding="utf-8")
    with pytest.raises(OrganisationsFileError, match=str(path)):
        load_organisations(path)


def test_an_empty_directory_knows_nothing() -> None:
    assert OrganisationDirectory().describe(OKB)["known"] is False
