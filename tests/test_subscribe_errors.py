from __future__ import annotations

import pytest

from lifecycle import STARTING, Event, EventBus


def test_subscribing_something_not_callable_says_what_was_expected() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        EventBus().subscribe(STARTING, "not a function")  # type: ignore[arg-type]


def test_handler_that_cannot_take_the_event_fails_at_subscribe_time() -> None:
    def needs_two(event: Event, other: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"signature \(event: 'Event', other: 'int'\)"):
        EventBus().subscribe(STARTING, needs_two)


def test_keyword_only_requirements_are_refused() -> None:
    async def keyword(*, event: Event) -> None:
        pass

    with pytest.raises(TypeError, match="only required positional argument"):
        EventBus().subscribe(STARTING, keyword)


def test_handlers_with_optional_extras_are_accepted() -> None:
    def flexible(event: Event, retries: int = 3, *args: object, **kwargs: object) -> None:
        pass

    assert EventBus().subscribe(STARTING, flexible).connected


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        EventBus().subscribe(STARTING, lambda e: None, timeout=timeout)


def test_labels_must_not_be_a_bare_string() -> None:
    with pytest.raises(TypeError, match=r"write labels=\['gpu'\]"):
        EventBus().subscribe(STARTING, lambda e: None, labels="gpu")


def test_inline_async_handler_is_refused() -> None:
    async def handler(event: Event) -> None:
        pass

    with pytest.raises(ValueError, match="inline=True is for plain functions"):
        EventBus().subscribe(STARTING, handler, inline=True)


def test_signal_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="signal name"):
        EventBus().subscribe(None, lambda e: None)  # type: ignore[arg-type]


def test_bus_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_background"):
        EventBus(max_background=0)
