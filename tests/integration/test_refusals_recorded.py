"""Every operation the served OpenAPI document lists refuses a role the policy does not allow with a
403 (a JSON body; a page: the refusal page), and leaves a RecordAccessed event with outcome
``denied`` naming who and from where: an auditor sees who tried to open what their role does not allow.

The sweep calls every operation (path parameters filled with plausible values, no body) as users
of roles that may do little (analyst, modality, regional IT); whatever each answers, every 403
must be recorded, once.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.readside import ReadSide

#: the roles the sweep signs in as (each is refused most operations)
SWEEP_ROLES = ("analyst", "okb-pacs", "it")
SAMPLE = {"organisation": "1.2.643.5.1.13.13.12.2.50.1001", "frames": "1"}


def _filled(path: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: SAMPLE.get(m.group(1), "1.2.3.4"), path)


def test_every_refusal_of_a_role_is_a_403_json_and_a_denied_access_event(tmp_path: Path) -> None:
    with ReadSide.start(tmp_path) as side:
        with side.client() as anonymous:
            document = anonymous.get("/openapi.json").json()
        operations = [
            (method.upper(), path)
            for path, item in document["paths"].items()
            for method in item
            if method in ("get", "post", "put", "delete", "patch")
        ]
        refused: list[tuple[str, str, str]] = []
        for user in SWEEP_ROLES:
            with side.client(user) as client:
                for method, path in operations:
                    url = _filled(path)
                    before = {e.envelope.event_id for e in side.accesses()}
                    # streamed: a permitted live stream (the dashboard's) is left at its headers
                    with client.stream(method, url) as answer:
                        if answer.status_code != 403:
                            continue
                        answer.read()
                    kind = answer.headers["content-type"]
                    if kind.startswith("text/html"):  # a page: the refusal page, in the page's language
                        assert not path.startswith(("/api/", "/dicomweb/")), (method, url)
                    else:
                        assert kind.startswith("application/json"), (method, url, kind)
                        assert answer.json()["error"] == "forbidden", (method, url, answer.text)
                    # recorded before the 403 was answered: exactly one event, this user's, denied
                    new = [e for e in side.accesses() if e.envelope.event_id not in before]
                    assert len(new) == 1, (user, method, url, [e.payload for e in new])
                    (event,) = new
                    assert event.payload["outcome"] == "denied", (user, method, url, event.payload)
                    assert event.envelope.actor.user == user, (user, method, url, event.payload)
                    assert event.payload["remote_address"] == "127.0.0.1"
                    refused.append((user, method, url))
        # the sweep did find refusals (monitoring for the analyst, audit for regional IT, ...)
        assert len(refused) >= 10, refused
