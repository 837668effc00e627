"""Inline handlers' results are built on first access, and say exactly what happened."""

from __future__ import annotations

import pytest

from lifecycle import STARTING, EmitReport, EventBus, HandlerResult, Status

from .helpers import starting

pytestmark = pytest.mark.anyio


def _boom(event: object) -> None:
    raise KeyError("boom")


async def test_inline_results_keep_order_status_and_exception_after_a_failure() -> None:
    bus = EventBus()
    ran: list[str] = []
    bus.subscribe(STARTING, lambda e: ran.append("a"), inline=True, name="a")
    bus.subscribe(STARTING, _boom, inline=True, name="b", critical=True)
    bus.subscribe(STARTING, lambda e: ran.append("c"), inline=True, name="c")
    bus.subscribe(STARTING, _boom, inline=True, name="d")
    report = await bus.emit(starting("run-7"))
    assert ran == ["a", "c"]
    assert [(r.handler, r.status) for r in report.results] == [
        ("a", Status.OK),
        ("b", Status.ERROR),
        ("c", Status.OK),
        ("d", Status.ERROR),
    ]
    assert all(isinstance(r, HandlerResult) for r in report.results)
    assert isinstance(report.results[1].exception, KeyError)
    assert report.results[0].exception is None
    assert [r.critical for r in report.results] == [False, True, False, False]
    assert {(r.signal, r.run_id, r.background) for r in report.results} == {
        (STARTING, "run-7", False)
    }
    assert [r.handler for r in report.critical_failures] == ["b"]
    assert not report.ok


async def test_inline_durations_are_each_handlers_own_and_fit_in_the_emit() -> None:
    bus = EventBus()
    for index in range(5):
        bus.subscribe(STARTING, lambda e: None, inline=True, name=f"h{index}")
    report = await bus.emit(starting())
    durations = [r.duration for r in report.results]
    assert all(duration >= 0 for duration in durations)
    assert sum(durations) <= report.duration


async def test_the_report_builds_inline_results_once() -> None:
    bus = EventBus()
    bus.subscribe(STARTING, lambda e: None, inline=True)
    report = await bus.emit(starting())
    assert report.results is report.results
    assert report.ok


async def test_result_hooks_see_inline_results_as_they_are_reported() -> None:
    bus = EventBus()
    seen: list[HandlerResult] = []
    bus.on_result(lambda bus, result: seen.append(result))
    bus.subscribe(STARTING, lambda e: None, inline=True, name="ok")
    bus.subscribe(STARTING, _boom, inline=True, name="fails")
    report = await bus.emit(starting())
    assert seen == list(report.results)
    assert [r.status for r in seen] == [Status.OK, Status.ERROR]


async def test_a_lazy_report_equals_one_built_from_its_results() -> None:
    bus = EventBus()
    bus.subscribe(STARTING, lambda e: None, inline=True)
    report = await bus.emit(starting())
    twin = EmitReport(report.event, report.results, report.background, report.duration)
    assert twin == report
    assert hash(twin) == hash(report)
    assert repr(twin) == repr(report)
    assert "EmitReport(event=" in repr(report)


async def test_a_report_is_immutable() -> None:
    report = await EventBus().emit(starting())
    with pytest.raises(AttributeError):
        report.duration = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del report.event
