"""Cache keys: equal for requests that must share an answer, different for all others."""

from __future__ import annotations

import re

import pytest

from streams.policies.cache_key import (
    IGNORED_PARAMS,
    cache_key,
    cache_namespace,
    normalised_prompt_text,
    ring_head_key,
    ring_slot_key,
    semantic_scope,
)

MODEL = "gpt-4o-mini"
USER = {"role": "user", "content": "What is the capital of France?"}
SYSTEM = {"role": "system", "content": "You are terse."}
BASE: dict[str, object] = {
    "namespace": "acme",
    "model": MODEL,
    "messages": [SYSTEM, USER],
    "params": {"temperature": 0, "max_tokens": 100},
}


def key_of(**changes: object) -> str:
    request = {**BASE, **changes}
    return cache_key(
        request["namespace"],  # type: ignore[arg-type]
        request["model"],  # type: ignore[arg-type]
        request["messages"],  # type: ignore[arg-type]
        request["params"],  # type: ignore[arg-type]
    )


def with_params(**params: object) -> dict[str, object]:
    return {"params": {**BASE["params"], **params}}  # type: ignore[dict-item]


SAME = [
    ("temperature 0 and 0.0", with_params(temperature=0.0)),
    ("max_tokens 100 and 100.0", with_params(max_tokens=100.0)),
    ("irrelevant user field", with_params(user="alice")),
    ("metadata", with_params(metadata={"trace": "x"})),
    ("stream flag", with_params(stream=True)),
    ("request id and priority", with_params(request_id="r-9", priority="high")),
    ("cache control", with_params(cache_mode="refresh", cache_ttl_ms=5)),
    ("param None is absent", with_params(seed=None)),
    ("empty stop list is absent", with_params(stop=[])),
    ("param order", {"params": {"max_tokens": 100, "temperature": 0}}),
    ("message key order", {"messages": [SYSTEM, {"content": USER["content"], "role": "user"}]}),
    ("message name None", {"messages": [SYSTEM, {**USER, "name": None}]}),
    (
        "trailing whitespace",
        {"messages": [SYSTEM, {**USER, "content": "  " + USER["content"] + "\n"}]},
    ),
]

DIFFERENT = [
    ("other tenant", {"namespace": "globex"}),
    ("other model", {"model": "gpt-4o"}),
    ("max_tokens", with_params(max_tokens=101)),
    ("temperature", with_params(temperature=0.2)),
    ("top_p", with_params(top_p=0.5)),
    ("seed", with_params(seed=7)),
    ("stop", with_params(stop=["\n"])),
    ("response_format", with_params(response_format='{"type": "json_object"}')),
    ("unknown parameter is hashed", with_params(top_k=5)),
    ("boolean is not a number", with_params(logprobs=True)),
    ("message order", {"messages": [USER, SYSTEM]}),
    ("role", {"messages": [SYSTEM, {**USER, "role": "assistant"}]}),
    ("name", {"messages": [SYSTEM, {**USER, "name": "bob"}]}),
    (
        "inner whitespace",
        {"messages": [SYSTEM, {**USER, "content": "What  is the capital of France?"}]},
    ),
    ("case", {"messages": [SYSTEM, {**USER, "content": USER["content"].lower()}]}),
    ("extra turn", {"messages": [SYSTEM, USER, USER]}),
    ("no system prompt", {"messages": [USER]}),
]


@pytest.mark.parametrize(("case", "change"), SAME, ids=[c for c, _ in SAME])
def test_requests_that_must_share_an_answer_share_a_key(
    case: str, change: dict[str, object]
) -> None:
    assert key_of(**change) == key_of()


@pytest.mark.parametrize(("case", "change"), DIFFERENT, ids=[c for c, _ in DIFFERENT])
def test_requests_that_may_differ_get_different_keys(case: str, change: dict[str, object]) -> None:
    assert key_of(**change) != key_of()


def test_tools_as_json_string_and_as_objects_share_a_key() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": 1.0}}}]
    as_string = '[{"function":{"parameters":{"x":1},"name":"f"},"type":"function"}]'
    assert key_of(**with_params(tools=tools)) == key_of(**with_params(tools=as_string))


def test_line_endings_are_normalised_but_code_indentation_is_kept() -> None:
    code = "```\ndef f():\n    return 1\n```"
    crlf = code.replace("\n", "\r\n")
    dedented = code.replace("    ", "")

    def as_message(text: str) -> dict[str, object]:
        return {"messages": [{"role": "user", "content": text}]}

    assert key_of(**as_message(code)) == key_of(**as_message(crlf))
    assert key_of(**as_message(code)) != key_of(**as_message(dedented))


def test_multimodal_text_parts_are_normalised_and_images_hashed() -> None:
    def parts(text: str, url: str) -> dict[str, object]:
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
        return {"messages": [{"role": "user", "content": content}]}

    assert key_of(**parts("describe ", "a.png")) == key_of(**parts("describe", "a.png"))
    assert key_of(**parts("describe", "a.png")) != key_of(**parts("describe", "b.png"))


def test_key_is_versioned_prefixed_by_namespace_and_stable() -> None:
    key = key_of()
    assert re.fullmatch(r"cache/v1/acme/[0-9a-f]{64}", key)
    # Pinned: changing the canonical form orphans every stored entry; bump KEY_VERSION then.
    assert key == "cache/v1/acme/4657add30cc081a5c816ca29f3fe9ef9d92b94da2fd1f296349b9016b37f0d01"


def test_ignored_params_do_not_include_output_changing_ones() -> None:
    assert not IGNORED_PARAMS & {"temperature", "max_tokens", "seed", "tools", "n", "stop"}


def test_values_that_cannot_be_serialised_are_rejected() -> None:
    with pytest.raises(TypeError):
        cache_key("acme", MODEL, [USER], {"temperature": object()})


@pytest.mark.parametrize(
    ("tenant", "shared", "expected"),
    [("acme", None, "acme"), ("acme", "public", "@public"), ("globex", "public", "@public")],
)
def test_namespace_is_the_tenant_unless_shared(
    tenant: str, shared: str | None, expected: str
) -> None:
    assert cache_namespace(tenant, shared) == expected


@pytest.mark.parametrize("tenant", ["", "a/b", "@public"])
def test_tenant_names_that_could_collide_are_not_namespaces(tenant: str) -> None:
    with pytest.raises(ValueError):
        cache_namespace(tenant)


def test_normalised_prompt_text_is_the_last_message_with_whitespace_collapsed() -> None:
    messages = [SYSTEM, {"role": "user", "content": "  What is\n\nthe  capital\tof France? "}]
    assert normalised_prompt_text(messages) == "What is the capital of France?"
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert normalised_prompt_text([{"role": "user", "content": parts}]) == "Describe"
    assert normalised_prompt_text([]) == ""


def scope_of(text: str, **changes: object) -> str:
    request = {**BASE, **changes}
    messages = [*request["messages"][:-1], {"role": "user", "content": text}]  # type: ignore[index]
    return semantic_scope(request["namespace"], request["model"], messages, request["params"])  # type: ignore[arg-type]


def test_paraphrases_share_a_semantic_scope() -> None:
    assert scope_of("What is the capital of France?") == scope_of("Tell me France's capital.")
    assert scope_of("x").startswith("semantic/v1/acme/")


@pytest.mark.parametrize(
    "change",
    [
        {"namespace": "globex"},
        {"model": "gpt-4o"},
        with_params(temperature=0.5),
        {"messages": [{"role": "system", "content": "You are verbose."}, USER]},
    ],
)
def test_semantic_scope_requires_everything_but_the_last_text_to_match(
    change: dict[str, object],
) -> None:
    assert scope_of("What is the capital of France?", **change) != scope_of(
        "What is the capital of France?"
    )


def test_semantic_scope_separates_prompts_with_different_numbers() -> None:
    assert scope_of("What is 2 + 2?") != scope_of("What is 2 + 3?")
    assert scope_of("What is 2 + 2?") == scope_of("what's 2+2")


def test_ring_keys_are_per_namespace() -> None:
    assert ring_head_key("acme") != ring_head_key("globex")
    assert ring_slot_key("acme", 3) == "cacheidx/v1/acme/3"
    assert ring_slot_key("acme", 3) != ring_head_key("acme")
