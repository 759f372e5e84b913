"""The report lifecycle rules (GOST R 52636) as pure functions: decisions and the fold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.reports.fold import fact
from ingest.reports.rules import (
    Author,
    ReportConflict,
    ReportForbidden,
    ReportInvalid,
    ReportNotFound,
    ReportState,
    amend,
    content_sha256,
    draft,
    edit,
    evolve,
    sign,
)
from schemas.codec import decode, encode
from schemas.events import Actor, Event

STUDY = "1.2.826.0.1.3680043.8.498.77"
RADIOLOGIST = Author(Actor("dr.petrov", "radiologist"), {"code": "R-1", "name": "Петров^Пётр"}, "ORG-1")
OTHER_RADIOLOGIST = Author(Actor("dr.sidorova", "radiologist"), {"code": "R-2", "name": "Сидорова^Анна"}, "ORG-1")
ADMIN = Author(Actor("admin", "administrator"), {"code": None, "name": "admin"})
REFERRING = Author(Actor("ref", "referring-doctor"), {"code": None, "name": "ref"}, "ORG-2")
NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def apply(state: ReportState | None, event: Event) -> ReportState:
    # through the codec, as the log delivers it
    result = evolve(state, fact(decode(encode(event))))
    assert result is not None
    return result


def drafted() -> ReportState:
    return apply(None, draft("r-1", STUDY, "Протокол", "", RADIOLOGIST))


def signed() -> ReportState:
    state = apply(drafted(), edit(drafted(), "Протокол", "Заключение", RADIOLOGIST))
    return apply(state, sign(state, RADIOLOGIST, NOW))


def test_draft_edit_sign_amend() -> None:
    state = drafted()
    assert (state.status, state.revision, state.author["code"]) == ("draft", 1, "R-1")
    state = apply(state, edit(state, "П2", "З2", RADIOLOGIST))
    assert (state.protocol_text, state.conclusion_text, state.revision) == ("П2", "З2", 2)
    event = sign(state, RADIOLOGIST, NOW)
    assert event["signed_at"] == NOW and event["revision"] == 2
    assert event["content_sha256"] == content_sha256("П2", "З2")
    state = apply(state, event)
    assert state.signed and state.signer == {"code": "R-1", "name": "Петров^Пётр"}
    assert datetime.fromisoformat(state.signed_at or "") == NOW
    later = NOW + timedelta(days=1)
    state = apply(state, amend(state, None, "З3", "уточнение", ADMIN, later))
    assert state.signed and state.conclusion_text == "З3" and state.protocol_text == "П2"
    [a] = state.amendments
    assert a["amendment_number"] == 1
    assert a["before"] == {"protocol_text": "П2", "conclusion_text": "З2"}
    assert a["after"] == {"protocol_text": "П2", "conclusion_text": "З3"}
    state = apply(state, amend(state, "П4", None, "ещё", RADIOLOGIST, later))
    assert [x["amendment_number"] for x in state.amendments] == [1, 2]


def test_signed_report_is_immutable() -> None:
    state = signed()
    with pytest.raises(ReportConflict):
        edit(state, "x", "y", RADIOLOGIST)
    with pytest.raises(ReportConflict):
        sign(state, RADIOLOGIST, NOW)


def test_amendment_rules() -> None:
    with pytest.raises(ReportConflict):
        amend(drafted(), None, "x", "reason", RADIOLOGIST, NOW)  # only signed reports
    with pytest.raises(ReportForbidden):
        amend(signed(), None, "x", "reason", REFERRING, NOW)
    with pytest.raises(ReportInvalid):
        amend(signed(), None, "x", "   ", RADIOLOGIST, NOW)  # a reason is required
    with pytest.raises(ReportInvalid):
        amend(signed(), None, "Заключение", "no change", RADIOLOGIST, NOW)
    with pytest.raises(ReportNotFound):
        amend(None, None, "x", "reason", RADIOLOGIST, NOW)


def test_only_radiologists_write_and_sign() -> None:
    with pytest.raises(ReportForbidden):
        draft("r-2", STUDY, "p", "c", REFERRING)
    with pytest.raises(ReportForbidden):
        sign(drafted(), ADMIN, NOW)
    with pytest.raises(ReportInvalid):
        draft("r-2", "not-a-uid", "p", "c", RADIOLOGIST)


def test_only_the_author_edits_and_signs_a_draft() -> None:
    state = apply(drafted(), edit(drafted(), "p", "c", RADIOLOGIST))
    assert state.drafted_by("dr.petrov") and not state.drafted_by("dr.sidorova")
    with pytest.raises(ReportForbidden, match="only the author"):
        sign(state, OTHER_RADIOLOGIST, NOW)
    with pytest.raises(ReportForbidden, match="only the author"):
        edit(state, "p2", "c2", OTHER_RADIOLOGIST)
    with pytest.raises(ReportForbidden):
        sign(state, ADMIN, NOW)
    # a draft that arrived as a DICOM document (its actor a modality) has no author among the users
    document = draft("r-3", STUDY, "p", "c", RADIOLOGIST)
    as_document = {**fact(decode(encode(document))), "actor": {"user": "OKB_CT1", "role": "modality"}}
    from_document = evolve(None, as_document)
    assert from_document is not None and from_document.author_user is None
    assert sign(from_document, OTHER_RADIOLOGIST, NOW)["signer"]["code"] == "R-2"


def test_a_draft_view_without_its_texts_still_says_a_draft_exists() -> None:
    hidden = drafted().view(draft_text=False)
    assert hidden["status"] == "draft" and hidden["text_hidden"] is True
    assert hidden["protocol_text"] is None and hidden["conclusion_text"] is None
    assert "author_user" not in hidden
    assert drafted().view()["protocol_text"] == "Протокол"
    assert signed().view(draft_text=False)["conclusion_text"] == "Заключение"  # only drafts are hidden


def test_signing_needs_a_conclusion_and_the_expected_revision() -> None:
    with pytest.raises(ReportInvalid):
        sign(drafted(), RADIOLOGIST, NOW)  # empty conclusion
    state = apply(drafted(), edit(drafted(), "p", "c", RADIOLOGIST))
    with pytest.raises(ReportConflict):
        sign(state, RADIOLOGIST, NOW, expected_revision=1)
    assert sign(state, RADIOLOGIST, NOW, expected_revision=2)["revision"] == 2


def test_the_fold_is_idempotent_and_total() -> None:
    state = drafted()
    e = edit(state, "p", "c", RADIOLOGIST)
    once = apply(state, e)
    assert apply(once, e) == once  # redelivery changes nothing
    s = sign(once, RADIOLOGIST, NOW)
    done = apply(once, s)
    # a stale edit after signing (only a foreign writer could log it) is ignored, not raised
    late_edit = edit(once, "zzz", "zzz", RADIOLOGIST)
    assert apply(done, late_edit).conclusion_text == "c"
    assert evolve(None, fact(e)) is None  # an edit of an unknown report


def test_state_round_trips_through_json() -> None:
    state = signed()
    assert ReportState.from_json(state.to_json()) == state
