"""OpenAI JSON <-> Sluicegate records (connectors/ingress/wire.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from connectors.ingress import wire
from connectors.ingress.errors import ApiError
from connectors.ingress.wire import ChatCall, Hints
from schemas import registry

NOW = 1_700_000_000_000


def call(body: Any, hints: Hints | None = None) -> ChatCall | ApiError:
    return wire.chat_request(
        body,
        tenant="acme",
        hints=hints or Hints(),
        request_id="rid1",
        reply_to="sg.replies.ingress-a",
        now_ms=NOW,
        deadline_ms=NOW + 120_000,
        metadata={"ingress": "a"},
    )


def ok(body: Any, hints: Hints | None = None) -> ChatCall:
    result = call(body, hints)
    assert isinstance(result, ChatCall), result
    return result


def response(**fields: Any) -> dict[str, Any]:
    record = {
        "request_id": "rid1",
        "status": "ok",
        "reason": "",
        "detail": "",
        "content": "Hello there, friend.",
        "finish_reason": "stop",
        "model": "sim-large",
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "cost_micros": 80,
        "cache_kind": None,
        "degradation_reason": None,
        "retry_after_ms": None,
        "request_created_at": NOW,
        "created_at": NOW + 300,
    }
    return {**record, **fields}


# -- headers ----------------------------------------------------------------------------


def test_hints_default_to_normal_priority_default_feature_and_cache() -> None:
    assert wire.parse_hints({}) == Hints("normal", "default", "default", None, None)


def test_hints_read_every_sluicegate_header() -> None:
    hints = wire.parse_hints(
        {
            "x-sluicegate-priority": "HIGH",
            "x-sluicegate-feature": "search.v2",
            "x-sluicegate-cache": "only_if_cached",
            "x-sluicegate-cache-ttl-ms": "60000",
            "x-sluicegate-timeout-ms": "5000",
        }
    )
    assert hints == Hints("high", "search.v2", "only_if_cached", 60_000, 5_000)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-sluicegate-priority", "urgent"),
        ("x-sluicegate-feature", "has space"),
        ("x-sluicegate-feature", ""),
        ("x-sluicegate-cache", "sometimes"),
        ("x-sluicegate-cache-ttl-ms", "soon"),
        ("x-sluicegate-cache-ttl-ms", "0"),
        ("x-sluicegate-timeout-ms", "-5"),
        ("x-sluicegate-timeout-ms", str(wire.MAX_TIMEOUT_MS + 1)),
    ],
)
def test_bad_hint_headers_are_400_naming_the_header(header: str, value: str) -> None:
    error = wire.parse_hints({header: value})
    assert isinstance(error, ApiError)
    assert error.status == 400 and error.param == header
    assert error.body()["error"]["type"] == "invalid_request_error"


# -- request mapping --------------------------------------------------------------------


def test_a_full_openai_body_maps_to_a_chat_request_record() -> None:
    body = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "first part"},
                    {"type": "text", "text": "second part"},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        "temperature": 0,
        "top_p": 0.5,
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "stop": "END",
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.2,
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    hints = Hints("high", "search", "refresh", 1000, None)
    result = ok(body, hints)
    r = result.record
    assert (result.stream, result.include_usage) == (True, True)
    assert r["request_id"] == "rid1" and r["tenant"] == "acme"
    assert (r["priority"], r["feature"], r["cache_mode"], r["cache_ttl_ms"]) == (
        "high",
        "search",
        "refresh",
        1000,
    )
    assert r["reply_to"] == "sg.replies.ingress-a"
    assert (r["created_at"], r["deadline_ms"]) == (NOW, NOW + 120_000)
    assert r["messages"] == [
        {"role": "system", "content": "Be brief.", "name": None},
        {"role": "user", "content": "first part\nsecond part", "name": "ann"},
        {"role": "assistant", "content": "", "name": None},
    ]
    assert r["temperature"] == 0.0 and isinstance(r["temperature"], float)
    assert r["max_tokens"] == 20  # max_completion_tokens wins
    assert r["stop"] == ["END"]
    assert r["seed"] == 7
    assert json.loads(r["response_format"]) == {"type": "json_object"}
    assert json.loads(r["tools"])[0]["function"]["name"] == "f"
    assert r["metadata"] == {"ingress": "a", "user": "user-42"}
    assert r["stream"] is True
    # The record is exactly what the Avro schema accepts.
    assert registry.decode(registry.CHAT_REQUEST, registry.encode(registry.CHAT_REQUEST, r)) == r


def test_a_minimal_body_leaves_every_optional_field_empty() -> None:
    result = ok({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    r = result.record
    assert (result.stream, result.include_usage) == (False, False)
    assert r["stop"] == [] and r["max_tokens"] is None and r["temperature"] is None
    assert r["response_format"] is None and r["tools"] is None
    assert r["cache_mode"] == "default" and r["priority"] == "normal"
    registry.encode(registry.CHAT_REQUEST, r)


def test_max_tokens_is_used_without_max_completion_tokens() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 9}
    assert ok(body).record["max_tokens"] == 9


def test_include_usage_without_stream_is_ignored() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stream_options": {"include_usage": True},
    }
    assert ok(body).include_usage is False


def test_openai_metadata_is_kept_but_cannot_override_the_ingress_entries() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {"trace": "t-1", "ingress": "forged"},
    }
    assert ok(body).record["metadata"] == {"trace": "t-1", "ingress": "a"}


MSG = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ("text", None),
        ({"messages": MSG}, "model"),
        ({"model": 3, "messages": MSG}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ],
            },
            "messages[0].content",
        ),
        ({"model": "m", "messages": MSG, "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": MSG, "temperature": True}, "temperature"),
        ({"model": "m", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": 2**31}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"model": "m", "messages": MSG, "stop": [1]}, "stop"),
        ({"model": "m", "messages": MSG, "seed": "7"}, "seed"),
        ({"model": "m", "messages": MSG, "n": 2}, "n"),
        ({"model": "m", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MSG, "stream_options": True}, "stream_options"),
        ({"model": "m", "messages": MSG, "user": 5}, "user"),
        ({"model": "m", "messages": MSG, "metadata": {"a": 1}}, "metadata"),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(body: Any, param: str | None) -> None:
    error = call(body)
    assert isinstance(error, ApiError)
    assert error.status == 400
    assert error.param == param
    assert error.body()["error"]["message"]


# -- outcomes -> HTTP -------------------------------------------------------------------


def test_rate_limited_is_429_with_retry_after_rounded_up_and_limits() -> None:
    error = wire.error_for_response(
        response(status="rejected", reason="rate_limited", detail="60 rpm", retry_after_ms=1500),
        {"requests": 60},
    )
    assert error.status == 429
    assert error.body() == {
        "error": {
            "message": "60 rpm",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert error.headers["retry-after"] == "2"
    assert error.headers["retry-after-ms"] == "1500"
    assert error.headers["x-ratelimit-limit-requests"] == "60"
    assert error.headers["x-sluicegate-status"] == "rejected"
    assert error.headers["x-sluicegate-reason"] == "rate_limited"


def test_budget_exceeded_is_429_insufficient_quota_that_the_sdk_does_not_retry() -> None:
    error = wire.error_for_response(response(status="rejected", reason="budget_exceeded"))
    assert (error.status, error.type, error.code) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert error.headers["x-should-retry"] == "false"


def test_only_if_cached_miss_is_504_not_retried() -> None:
    error = wire.error_for_response(response(status="rejected", reason="cache_miss"))
    assert (error.status, error.code) == (504, "cache_miss")
    assert error.headers["x-should-retry"] == "false"


def test_invalid_is_400_with_the_workers_detail() -> None:
    detail = "messages[0].role: must be one of assistant, system, tool, user"
    error = wire.error_for_response(response(status="rejected", reason="invalid", detail=detail))
    assert (error.status, error.type, error.message) == (400, "invalid_request_error", detail)
    assert "retry-after" not in error.headers


@pytest.mark.parametrize(
    ("status", "reason", "retry_after_ms", "retry_after"),
    [
        ("shed", "overloaded", 2500, "3"),
        ("shed", "deadline_expired", None, "1"),
        ("failed", "provider_error", None, "1"),
        ("failed", "unavailable", 10, "1"),
    ],
)
def test_shed_and_failed_are_503_with_retry_after(
    status: str, reason: str, retry_after_ms: int | None, retry_after: str
) -> None:
    error = wire.error_for_response(
        response(status=status, reason=reason, retry_after_ms=retry_after_ms)
    )
    assert (error.status, error.type, error.code) == (503, "server_error", reason)
    assert error.headers["retry-after"] == retry_after


@pytest.mark.parametrize(
    ("cache_kind", "header"),
    [
        (None, "miss"),
        ("exact", "hit"),
        ("coalesced", "hit"),
        ("semantic", "semantic"),
        ("stale", "stale"),
    ],
)
def test_cache_header_names_how_the_cache_answered(cache_kind: str | None, header: str) -> None:
    assert wire.response_headers(response(cache_kind=cache_kind))["x-sluicegate-cache"] == header


def test_success_headers_carry_status_request_id_and_cost() -> None:
    headers = wire.response_headers(response(status="degraded", degradation_reason="fallback"))
    assert headers["x-sluicegate-status"] == "degraded"
    assert headers["x-sluicegate-request-id"] == headers["x-request-id"] == "rid1"
    assert headers["x-sluicegate-cost-micros"] == "80"
    assert headers["x-sluicegate-degradation"] == "fallback"
    assert "x-sluicegate-reason" not in headers


def test_completion_is_an_openai_chat_completion_with_the_model_used() -> None:
    body = wire.completion(response(finish_reason="length"), "chat")
    parsed = ChatCompletion.model_validate(body)
    assert parsed.id == "chatcmpl-rid1"
    assert parsed.model == "sim-large"
    assert parsed.created == NOW // 1000
    assert parsed.choices[0].message.content == "Hello there, friend."
    assert parsed.choices[0].finish_reason == "length"
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.total_tokens) == (12, 17)


def test_completion_without_a_model_names_the_requested_one() -> None:
    body = wire.completion(response(model=None, finish_reason="weird"), "chat")
    assert body["model"] == "chat"
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Hello there, friend.", ["Hello", " there,", " friend."]),
        ("  lead and trail  ", ["  lead", " and", " trail", "  "]),
        ("line\nbreak", ["line", "\nbreak"]),
        ("one", ["one"]),
        ("", []),
        ("   ", ["   "]),
    ],
)
def test_word_deltas_join_back_to_the_text(text: str, pieces: list[str]) -> None:
    assert wire.word_deltas(text) == pieces
    assert "".join(wire.word_deltas(text)) == text


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_are_role_then_words_then_finish_then_usage(include_usage: bool) -> None:
    chunks = wire.stream_chunks(response(), "chat", include_usage)
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert all(c.id == "chatcmpl-rid1" and c.model == "sim-large" for c in parsed)
    assert parsed[0].choices[0].delta.role == "assistant"
    body = parsed[1:-2] if include_usage else parsed[1:-1]
    assert "".join(c.choices[0].delta.content or "" for c in body) == "Hello there, friend."
    assert len(body) == 3
    finish = parsed[-2] if include_usage else parsed[-1]
    assert finish.choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in parsed[:-2])
    if include_usage:
        assert parsed[-1].choices == []
        assert parsed[-1].usage is not None and parsed[-1].usage.completion_tokens == 5
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)


def test_sse_frames_json_and_done() -> None:
    assert wire.sse({"a": 1}) == b'data: {"a":1}\n\n'
    assert wire.sse("[DONE]") == b"data: [DONE]\n\n"
