from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

import pytest

from lifecycle import (
    EXITED,
    SCHEMA_VERSION,
    STARTING,
    EnvironmentInfo,
    ErrorInfo,
    Event,
    Outcome,
)


def _failed_event() -> Event:
    try:
        raise RuntimeError("disk full")
    except RuntimeError as exc:
        error = ErrorInfo.from_exception(exc)
    return Event(
        name=EXITED,
        run_id="run-1",
        environment=EnvironmentInfo.current("train", ["gpu", "nightly"]),
        attributes={"rows": 3, "ratio": 0.25, "tags": ["a", "b"], "nested": {"ok": None, "n": [1]}},
        outcome=Outcome.FAILED,
        duration=1.5,
        exit_code=2,
        error=error,
    )


def test_json_round_trip_is_lossless() -> None:
    event = _failed_event()
    again = Event.from_json(event.to_json())
    assert again == event
    assert again.to_dict() == event.to_dict()
    assert again.timestamp == event.timestamp


def test_json_form_carries_the_schema_version() -> None:
    assert json.loads(_failed_event().to_json())["schema_version"] == SCHEMA_VERSION


def test_unknown_schema_version_is_refused_by_name() -> None:
    data = _failed_event().to_dict()
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version 99"):
        Event.from_dict(data)


def test_missing_field_is_named() -> None:
    data = _failed_event().to_dict()
    del data["run_id"]
    with pytest.raises(ValueError, match="'run_id'"):
        Event.from_dict(data)


def test_error_info_keeps_type_message_and_traceback() -> None:
    error = _failed_event().error
    assert error is not None
    assert error.type == "RuntimeError"
    assert error.message == "disk full"
    assert "raise RuntimeError" in error.traceback


def test_event_is_immutable() -> None:
    event = _failed_event()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.run_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.attributes["rows"] = 4  # type: ignore[index]


def test_attributes_are_copied_not_shared() -> None:
    source: dict[str, object] = {"items": [1, 2]}
    event = Event(
        name=STARTING, run_id="r", environment=EnvironmentInfo.current("e"), attributes=source
    )
    source["items"] = []
    assert event.attributes["items"] == (1, 2)


def test_non_json_attribute_is_refused_with_its_path() -> None:
    with pytest.raises(TypeError, match=r"attributes\.config\.when is of type datetime"):
        Event(
            name=STARTING,
            run_id="r",
            environment=EnvironmentInfo.current("e"),
            attributes={"config": {"when": datetime.now(timezone.utc)}},
        )


def test_nan_attribute_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON cannot carry"):
        Event(
            name=STARTING,
            run_id="r",
            environment=EnvironmentInfo.current("e"),
            attributes={"loss": float("nan")},
        )


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        Event(
            name=STARTING,
            run_id="r",
            environment=EnvironmentInfo.current("e"),
            timestamp=datetime(2026, 1, 1),
        )


def test_each_event_gets_a_unique_id_and_utc_time() -> None:
    env = EnvironmentInfo.current("e")
    first, second = Event(STARTING, "r", env), Event(STARTING, "r", env)
    assert first.event_id != second.event_id
    assert first.timestamp.utcoffset() is not None
    assert first.timestamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_outcomes_cover_every_way_a_run_ends() -> None:
    assert {o.value for o in Outcome} >= {
        "succeeded", "failed", "cancelled", "aborted", "terminated", "killed", "timeout", "lost",
    }  # fmt: skip
    assert str(Outcome.KILLED) == "killed"


def test_signal_names() -> None:
    assert (STARTING, EXITED) == ("environment.starting", "environment.exited")


def test_run_and_event_ids_are_random_uuid4_hex() -> None:
    """Made without the uuid module (a start-up cost), they read as uuid4().hex did."""
    import uuid

    from lifecycle._event import new_id

    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    for made in ids:
        parsed = uuid.UUID(hex=made)
        assert (parsed.hex, parsed.version, parsed.variant) == (made, 4, uuid.RFC_4122)
