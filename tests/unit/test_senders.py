"""Who may store and who may query: each role's addresses hold on their own (pure rules)."""

from __future__ import annotations

from ingest.senders import parse_senders


def test_a_callers_open_addresses_do_not_widen_the_senders() -> None:
    senders = parse_senders(
        {
            "sender": [{"ae_title": "BOTH", "organisation": "O", "addresses": ["10.0.0.2"]}],
            "qr_caller": [{"ae_title": "BOTH", "organisation": "O", "role": "radiologist"}],
        }
    )
    assert senders.allowed("BOTH", "10.0.0.9") == (True, "known")  # the association: Q/R is allowed
    assert senders.may_store("BOTH", "10.0.0.9") == (False, "address-not-allowed")
    assert senders.may_store("BOTH", "10.0.0.2") == (True, "known")
    assert senders.may_query("BOTH", "10.0.0.9") is not None


def test_a_senders_open_addresses_do_not_widen_the_callers() -> None:
    senders = parse_senders(
        {
            "sender": [{"ae_title": "BOTH", "organisation": "O"}],
            "qr_caller": [{"ae_title": "BOTH", "organisation": "O", "role": "radiologist", "addresses": ["10.0.0.2"]}],
        }
    )
    assert senders.may_store("BOTH", "10.0.0.9") == (True, "known")
    assert senders.may_query("BOTH", "10.0.0.9") is None
    assert senders.may_query("BOTH", "10.0.0.2") is not None


def test_an_address_no_role_allows_is_refused_at_association() -> None:
    senders = parse_senders(
        {
            "sender": [{"ae_title": "BOTH", "organisation": "O", "addresses": ["10.0.0.2"]}],
            "qr_caller": [{"ae_title": "BOTH", "organisation": "O", "role": "radiologist", "addresses": ["10.0.0.3"]}],
        }
    )
    assert senders.allowed("BOTH", "10.0.0.9") == (False, "address-not-allowed")
    assert senders.allowed("BOTH", "10.0.0.3") == (True, "known")
    assert senders.may_store("BOTH", "10.0.0.3") == (False, "address-not-allowed")
    assert senders.may_store("WS", None) == (False, "not-a-sender")
