"""The simulator's replies: deterministic, token counts that grow, the two APIs' shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.providers.ratelimit_headers import parse_duration_ms, parse_ratelimit_headers
from connectors.simulator.wire import (
    AnthropicWire,
    Limits,
    OpenAIWire,
    WireError,
    format_duration,
    make_reply,
)


def chat(content: str, **params: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **params}


def test_same_request_gets_the_same_reply() -> None:
    one = make_reply(OpenAIWire.parse(chat("hello there")))
    two = make_reply(OpenAIWire.parse(chat("hello there")))
    assert one == two


@pytest.mark.parametrize(
    "other",
    [
        chat("hello there!"),
        chat("hello there", temperature=0.5),
        chat("hello there", seed=3),
        {**chat("hello there"), "model": "m2"},
    ],
)
def test_a_different_request_gets_a_different_reply(other: dict[str, Any]) -> None:
    base = make_reply(OpenAIWire.parse(chat("hello there")))
    assert make_reply(OpenAIWire.parse(other)).text != base.text


def test_streaming_does_not_change_the_content() -> None:
    plain = make_reply(OpenAIWire.parse(chat("hi")))
    streamed = make_reply(OpenAIWire.parse(chat("hi", stream=True)))
    assert plain == streamed


def test_reply_echoes_the_last_user_message() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "what about penguins"},
        ],
    }
    assert "what about penguins" in make_reply(OpenAIWire.parse(body)).text


def test_prompt_tokens_grow_with_the_prompt() -> None:
    short = make_reply(OpenAIWire.parse(chat("hi")))
    long = make_reply(OpenAIWire.parse(chat("hi " * 400)))
    two_messages = OpenAIWire.parse(
        {
            "model": "m",
            "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}],
        }
    )
    assert long.prompt_tokens > short.prompt_tokens + 250
    assert make_reply(two_messages).prompt_tokens > short.prompt_tokens


def test_max_tokens_truncates_with_finish_reason_length() -> None:
    full = make_reply(OpenAIWire.parse(chat("hello")))
    parsed = OpenAIWire.parse(chat("hello", max_tokens=3))
    capped = make_reply(parsed)
    assert (capped.completion_tokens, capped.truncated) == (3, True)
    assert full.text.startswith(capped.text)
    body = OpenAIWire.success(parsed, capped, "id1", 0)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_openai_response_has_the_chat_completion_shape() -> None:
    parsed = OpenAIWire.parse(chat("hello"))
    reply = make_reply(parsed)
    body = OpenAIWire.success(parsed, reply, "abc", 1700000000)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": reply.text,
        "refusal": None,
    }
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_openai_stream_ends_with_usage_then_done() -> None:
    parsed = OpenAIWire.parse(chat("hello", stream=True, stream_options={"include_usage": True}))
    reply = make_reply(parsed)
    events = OpenAIWire.stream(parsed, reply, "abc", 0)
    assert events[-1] == b"data: [DONE]\n\n"
    datas = [json.loads(e.decode()[len("data: ") :]) for e in events[:-1]]
    assert datas[-1]["choices"] == []
    assert datas[-1]["usage"]["completion_tokens"] == reply.completion_tokens
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in datas[:-1])
    assert text == reply.text


def test_anthropic_takes_system_as_a_top_level_field() -> None:
    body = {
        "model": "claude",
        "max_tokens": 100,
        "system": "be terse",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    parsed = AnthropicWire.parse(body)
    assert parsed.messages == [("system", "be terse"), ("user", "hi")]
    out = AnthropicWire.success(parsed, make_reply(parsed), "x", 0)
    assert out["type"] == "message"
    assert out["stop_reason"] == "end_turn"
    assert set(out["usage"]) >= {"input_tokens", "output_tokens"}


def test_anthropic_requires_max_tokens() -> None:
    with pytest.raises(WireError):
        AnthropicWire.parse({"model": "c", "messages": [{"role": "user", "content": "x"}]})


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    ],
)
def test_invalid_bodies_are_rejected(body: Any) -> None:
    with pytest.raises(WireError):
        OpenAIWire.parse(body)


def test_error_shapes() -> None:
    openai = OpenAIWire.error(429, "quota", "no money", None)
    assert openai["error"]["code"] == "insufficient_quota"
    anthropic = AnthropicWire.error(529, "overloaded", "Overloaded", None)
    assert anthropic == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


@pytest.mark.parametrize(
    ("ms", "text"),
    [(20, "20ms"), (1000, "1s"), (360_000, "6m0s"), (3_723_500, "1h2m3.5s"), (1500, "1.5s")],
)
def test_durations_use_openai_format_and_parse_back(ms: int, text: str) -> None:
    assert format_duration(ms) == text
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("wire", [OpenAIWire, AnthropicWire])
def test_limit_headers_parse_back(wire: Any) -> None:
    now = 1_700_000_000_000
    headers = wire.limit_headers(Limits(60, 0, 2000), now)
    info = parse_ratelimit_headers(headers, now)
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_ms) == (60, 0, 2000)
