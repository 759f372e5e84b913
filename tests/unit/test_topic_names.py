"""The archive's topic and group names under another prefix (``CAMI_TOPIC_PREFIX``), and back."""

from __future__ import annotations

import pytest

from streams.topics import SOURCE_OF_TRUTH, TopicNames, check_topic_prefix


def test_the_default_prefix_changes_nothing() -> None:
    names = TopicNames()
    for name in (*SOURCE_OF_TRUTH, "cami.archive-index", "cami-processors", "outage"):
        assert names.physical(name) == name == names.logical(name)


def test_another_prefix_renames_the_archives_topics_and_groups_and_back() -> None:
    names = TopicNames("cami-demo")
    assert names.physical("cami.dicom") == "cami-demo.dicom"
    assert names.physical("cami.archive-index") == "cami-demo.archive-index"  # a projection's group
    assert names.physical("cami-processors") == "cami-demo-processors"  # the Faust app id
    assert names.physical("cami-reader-1234") == "cami-demo-reader-1234"
    for name in (*SOURCE_OF_TRUTH, "cami.archive-index", "cami-processors", "cami-reader-1234"):
        assert names.logical(names.physical(name)) == name


def test_names_that_are_not_the_archives_stay_as_they_are() -> None:
    names = TopicNames("pilot")
    assert names.physical("outage") == "outage"
    assert names.physical("camille.topic") == "camille.topic"
    assert names.logical("cami.dicom") == "cami.dicom"  # the default archive's topic, not this one's
    assert names.logical("pilotage") == "pilotage"


@pytest.mark.parametrize("prefix", ["", "a b", "cami/x", "ä", ".", "..", "x" * 201])
def test_a_prefix_kafka_cannot_name_topics_with_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="not a topic prefix"):
        check_topic_prefix(prefix)
    with pytest.raises(ValueError):
        TopicNames(prefix)


def test_a_prefix_of_topic_characters_is_taken() -> None:
    assert check_topic_prefix("region-50.cami_2") == "region-50.cami_2"
