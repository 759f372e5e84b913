"""Claims on a study by arrivals in flight (ingest.study_claims): one patient at a time, many arrivals."""

from __future__ import annotations

import threading
import time

from ingest.study_claims import StudyClaims


def test_arrivals_of_one_patient_share_the_claim_and_another_patient_waits_for_them() -> None:
    claims = StudyClaims()
    order: list[str] = []
    first, second = claims.claim("1.2.3", "P1"), claims.claim("1.2.3", "P1")
    first.__enter__()
    second.__enter__()  # the same patient does not wait
    assert claims.in_flight("1.2.3") == 2

    def other_patient() -> None:
        with claims.claim("1.2.3", "P2"):
            order.append("P2 claimed")

    waiter = threading.Thread(target=other_patient)
    waiter.start()
    time.sleep(0.2)
    assert order == [] and waiter.is_alive()  # waits while P1's arrivals are in flight
    first.__exit__(None, None, None)
    time.sleep(0.2)
    assert order == []  # one P1 arrival is still in flight
    order.append("P1 done")
    second.__exit__(None, None, None)
    waiter.join(timeout=5)
    assert order == ["P1 done", "P2 claimed"]
    assert claims.in_flight("1.2.3") == 0


def test_claims_on_different_studies_do_not_wait_for_each_other() -> None:
    claims = StudyClaims()
    with claims.claim("1.2.3", "P1"), claims.claim("1.2.4", "P2"):
        assert (claims.in_flight("1.2.3"), claims.in_flight("1.2.4")) == (1, 1)
    assert claims.in_flight("1.2.3") == 0


def test_a_failed_arrival_releases_its_claim() -> None:
    claims = StudyClaims()
    try:
        with claims.claim("1.2.3", "P1"):
            raise RuntimeError("blob store down")
    except RuntimeError:
        pass
    with claims.claim("1.2.3", "P2"):  # not left waiting for a claim nobody holds
        assert claims.in_flight("1.2.3") == 1
