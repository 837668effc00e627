"""Subjects: one safe token for the signal, one for the environment."""

from __future__ import annotations

import lifecycle_nats
import pytest
from lifecycle_nats import decode_token, subject_for


def test_plain_names_pass_unchanged() -> None:
    assert subject_for("environment.exited", "nightly-etl") == "lifecycle.exited.nightly-etl"


def test_dots_are_escaped_in_the_environment() -> None:
    assert subject_for("environment.heartbeat", "web.01") == "lifecycle.heartbeat.web~2E01"


@pytest.mark.parametrize(
    "name",
    ["", "~", "a.b", "*", ">", "a b", "tab\there", "déjà vu", "日本", "x~2E", "UPPER_lower-9"],
)
def test_every_name_round_trips_as_one_safe_token(name: str) -> None:
    subject = subject_for("environment.starting", name, prefix="acme.lifecycle")
    prefix, kind, token = subject.rsplit(".", 2)
    assert (prefix, kind) == ("acme.lifecycle", "starting")
    assert all(ch.isascii() and (ch.isalnum() or ch in "_-~") for ch in token)
    assert decode_token(token) == name


def test_the_empty_name_is_a_lone_tilde() -> None:
    assert subject_for("environment.exited", "") == "lifecycle.exited.~"


def test_escapes_are_upper_case_utf8_bytes() -> None:
    assert subject_for("environment.exited", "é*") == "lifecycle.exited.~C3~A9~2A"


def test_custom_signals_keep_their_whole_name() -> None:
    assert subject_for("deploy.done", "web") == "lifecycle.deploy~2Edone.web"


@pytest.mark.parametrize("token", ["a.b", "~2e", "~G1", "~4", "a b", "", "~~", "~FF"])
def test_decode_refuses_what_encode_never_makes(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        decode_token(token)


@pytest.mark.parametrize("prefix", ["", "a..b", "a.*", ">", "with space", ".lead"])
def test_a_bad_prefix_is_a_clear_error(prefix: str) -> None:
    with pytest.raises(ValueError, match="subject_prefix"):
        subject_for("environment.exited", "x", prefix=prefix)


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(lifecycle_nats) if not name.startswith("_")}
    assert set(lifecycle_nats.__all__) == public
