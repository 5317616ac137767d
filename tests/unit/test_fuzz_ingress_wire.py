"""Fuzzing the ingress request parsing (connectors/ingress/wire.py) with random JSON bodies.

``chat_request`` sees whatever a client POSTs to ``/v1/chat/completions``. Property: it
returns an ApiError (a clean 4xx) or a ChatCall, never raises; and a ChatCall's record is
one the Avro schema accepts (wire.py promises to check the types Avro needs), so it can be
published. ``parse_hints`` likewise returns Hints or an ApiError for any headers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.ingress import wire
from connectors.ingress.errors import ApiError
from connectors.ingress.wire import ChatCall, Hints
from schemas import registry

NOW = 1_700_000_000_000
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# What json.loads can return (it accepts NaN and Infinity too).
JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
FIELDS = (
    "model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
    "stop", "seed", "n", "stream", "stream_options", "metadata", "user", "response_format",
    "tools", "presence_penalty", "frequency_penalty",
)  # fmt: skip
ROLES = st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), JSON)
CONTENT = st.one_of(
    st.text(max_size=30),
    st.none(),
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(), JSON)}),
            st.fixed_dictionaries({"type": st.one_of(st.just("image_url"), JSON)}),
            JSON,
        ),
        max_size=3,
    ),
    JSON,
)
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": ROLES, "content": CONTENT},
        optional={"name": st.one_of(st.text(max_size=10), JSON)},
    ),
    JSON,
)
PLAUSIBLE_VALUES = {
    "model": st.one_of(st.sampled_from(["chat", "sim-small", ""]), JSON),
    "messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON),
    "max_tokens": st.one_of(st.integers(-5, 2**40), JSON),
    "seed": st.one_of(st.integers(-(2**64), 2**64), JSON),
    "stop": st.one_of(st.lists(st.text(max_size=5), max_size=3), JSON),
    "metadata": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5)), JSON),
    "n": st.one_of(st.sampled_from([1, 1.0, True, 2, 0]), JSON),
}
HINTS = st.builds(
    Hints,
    priority=st.sampled_from(["critical", "high", "normal", "low"]),
    feature=st.sampled_from(["default", "search"]),
    cache_mode=st.sampled_from(["default", "bypass", "refresh", "only_if_cached"]),
    cache_ttl_ms=st.one_of(st.none(), st.integers(1, 2**40)),
    timeout_ms=st.one_of(st.none(), st.integers(1, 3_600_000)),
)


@st.composite
def near_valid_body(draw: st.DrawFn) -> dict[str, Any]:
    """A body with the real field names, each holding a plausible or random value."""
    body: dict[str, Any] = {
        "model": draw(PLAUSIBLE_VALUES["model"]),
        "messages": draw(PLAUSIBLE_VALUES["messages"]),
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        body[name] = draw(PLAUSIBLE_VALUES.get(name, JSON))
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(JSON)
    return body


def _call(body: Any, hints: Hints | None = None) -> ChatCall | ApiError:
    return wire.chat_request(
        body,
        tenant="acme",
        hints=hints or Hints(),
        request_id="rid-1",
        reply_to="sg.replies.ingress-a",
        now_ms=NOW,
        deadline_ms=NOW + 60_000,
        metadata={"ingress": "a"},
    )


def _check(body: Any, hints: Hints | None = None) -> ChatCall | ApiError:
    """The property: an ApiError with a 4xx status, or a ChatCall that Avro can encode."""
    result = _call(body, hints)
    if isinstance(result, ApiError):
        assert 400 <= result.status < 500 and result.message
        return result
    assert isinstance(result, ChatCall)
    data = registry.encode(registry.CHAT_REQUEST, result.record)
    decoded = registry.decode(registry.CHAT_REQUEST, data)
    assert decoded["request_id"] == "rid-1" and decoded["model"] == body["model"]
    return result


@FUZZ
@given(body=JSON)
def test_any_json_value_is_an_api_error_or_an_encodable_chat_call(body: Any) -> None:
    _check(body)


@FUZZ
@given(body=near_valid_body(), hints=HINTS)
def test_bodies_with_real_field_names_are_an_api_error_or_an_encodable_chat_call(
    body: dict[str, Any], hints: Hints
) -> None:
    _check(body, hints)


@FUZZ
@given(body=near_valid_body())
def test_the_body_survives_a_json_round_trip_with_the_same_verdict(body: dict[str, Any]) -> None:
    """What the ingress really sees is json.loads(bytes): parsing that gives the same kind."""
    try:
        text = json.dumps(body)
    except ValueError:  # pragma: no cover - every drawn value is JSON
        return
    assert type(_call(json.loads(text))) is type(_call(body))


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                wire.H_PRIORITY,
                wire.H_FEATURE,
                wire.H_CACHE,
                wire.H_CACHE_TTL,
                wire.H_TIMEOUT,
                "x-other",
            ]
        ),
        st.one_of(st.text(max_size=12), st.integers(-(2**70), 2**70).map(str)),
    )
)
def test_any_sluicegate_headers_give_hints_or_an_api_error(headers: dict[str, str]) -> None:
    hints = wire.parse_hints(headers)
    if isinstance(hints, ApiError):
        assert hints.status == 400 and hints.param in headers
    else:
        assert isinstance(hints, Hints) and hints.priority in ("critical", "high", "normal", "low")


@pytest.mark.parametrize(
    "body",
    [
        {"model": "chat", "messages": [{"role": "user", "content": "\ud800"}]},
        {"model": "chat", "messages": [{"role": "user", "content": "x"}], "user": "\udfff"},
        {"model": "chat", "messages": [{"role": "user", "content": "x"}], "stop": ["\ud800"]},
    ],
)
def test_text_that_is_not_utf8_encodable_is_an_api_error(body: dict[str, Any]) -> None:
    _check(body)
