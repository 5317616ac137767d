"""Cache keys: a stable digest of everything that can change a model's answer, per namespace.

Algorithm: build a canonical JSON document of the request -- model, messages, and the
parameters that can change the output -- with sorted keys, no whitespace, integral floats
written as integers (``1 == 1.0``), ``-0.0`` as ``0``; hash it with SHA-256; prefix the
namespace: ``cache/v1/{namespace}/{sha256 hex}``. Cost: O(size of the request).

What is hashed:

* ``model``, exactly as given (a route name is hashed as the route; resolve it first if two
  routes should share entries).
* every message's keys except those whose value is None; ``content`` text has its line
  endings normalised (``\\r\\n`` and ``\\r`` become ``\\n``) and leading/trailing whitespace
  stripped. Inner whitespace is kept: code blocks, tables and poems depend on it. Message
  order matters.
* every parameter EXCEPT those in ``IGNORED_PARAMS`` (delivery, identity and bookkeeping
  fields) and those that are None, ``[]`` or ``{}`` (the same as absent). Unknown parameters
  are hashed: a new parameter can only split the cache, never merge two different answers.
  The parameters known to change the output are listed in ``OUTPUT_PARAMS`` for reference.
  ``tools`` and ``response_format`` given as JSON strings (as in the Avro schema) are parsed,
  so their formatting does not matter.

The namespace is the tenant (isolation: a tenant never reads another tenant's answers) or
an explicitly configured shared namespace, written ``@name`` so that it can never equal a
tenant's name; see ``cache_namespace``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence

KEY_VERSION = "v1"

# Parameters that change the output; documentation only (anything not ignored is hashed).
OUTPUT_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
    }
)

# Parameters that do not change the answer: who asked, how it is delivered, bookkeeping.
IGNORED_PARAMS = frozenset(
    {
        "schema_version",
        "request_id",
        "original_request_id",
        "tenant",
        "feature",
        "priority",
        "reply_to",
        "created_at",
        "deadline_ms",
        "user",
        "metadata",
        "stream",
        "stream_options",
        "cache_mode",
        "cache_ttl_ms",
        "timeout",
        "idempotency_key",
        "store",
    }
)

_JSON_STRING_PARAMS = frozenset({"tools", "response_format", "tool_choice"})
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SPACES = re.compile(r"\s+")


def cache_namespace(tenant: str, shared_namespace: str | None = None) -> str:
    """The tenant itself, or ``@{shared_namespace}`` when the operator configured sharing."""
    if not tenant or "/" in tenant or tenant.startswith("@"):
        raise ValueError(f"tenant name {tenant!r} cannot be a cache namespace")
    if shared_namespace is None:
        return tenant
    if not shared_namespace or "/" in shared_namespace:
        raise ValueError(f"shared cache namespace {shared_namespace!r} is invalid")
    return f"@{shared_namespace}"


def _canonical(value: object) -> object:
    """Numbers normalised, tuples as lists, dict keys as strings; other types are bugs."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)  # 1.0 -> 1 and -0.0 -> 0
        return value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    raise TypeError(f"cannot hash a {type(value).__name__} in a cache key")


def _normalise_text(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _canonical_content(content: object) -> object:
    if isinstance(content, str):
        return _normalise_text(content)
    if isinstance(content, list | tuple):  # multimodal parts: [{"type": "text", "text": ...}]
        parts: list[object] = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                part = {**part, "text": _normalise_text(part["text"])}
            parts.append(_canonical(part))
        return parts
    return _canonical(content)


def _canonical_message(message: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in message.items():
        if value is None:
            continue
        out[name] = _canonical_content(value) if name == "content" else _canonical(value)
    return out


def _canonical_params(params: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in params.items():
        if name in IGNORED_PARAMS or value is None or value == [] or value == {}:
            continue
        if name in _JSON_STRING_PARAMS and isinstance(value, str):
            with contextlib.suppress(ValueError):  # not JSON: hash the string as given
                value = json.loads(value)
        out[name] = _canonical(value)
    return out


def _digest(document: object) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(
    namespace: str,
    model: str,
    messages: Sequence[Mapping[str, object]],
    params: Mapping[str, object],
) -> str:
    """``cache/v1/{namespace}/{sha256 hex}`` of the canonical (model, messages, params)."""
    document = {
        "model": model,
        "messages": [_canonical_message(m) for m in messages],
        "params": _canonical_params(params),
    }
    return f"cache/{KEY_VERSION}/{namespace}/{_digest(document)}"


def _last_text(messages: Sequence[Mapping[str, object]]) -> str:
    if not messages:
        return ""
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        texts = [p["text"] for p in content if isinstance(p, Mapping) and "text" in p]
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def normalised_prompt_text(messages: Sequence[Mapping[str, object]]) -> str:
    """The text the semantic cache embeds: the last message's text, whitespace collapsed.

    Everything else in the request (earlier turns, system prompt, model, parameters) must
    match exactly; it is in ``semantic_scope``.
    """
    return _SPACES.sub(" ", _last_text(messages)).strip()


def semantic_scope(
    namespace: str,
    model: str,
    messages: Sequence[Mapping[str, object]],
    params: Mapping[str, object],
) -> str:
    """``semantic/v1/{namespace}/{digest}``: requests in one scope may share answers by meaning.

    The digest covers the model, the parameters, every message but the last, the last
    message without its text (role, name, images...), and the numbers in its text:
    "what is 2 + 2" and "what is 2 + 3" embed almost alike, so they must not share a scope.
    """
    if not messages:
        raise ValueError("a request without messages has no semantic scope")
    last = dict(_canonical_message(messages[-1]))
    content = last.pop("content", None)
    if isinstance(content, list):
        last["content_parts"] = [p for p in content if not (isinstance(p, dict) and "text" in p)]
    document = {
        "model": model,
        "history": [_canonical_message(m) for m in messages[:-1]],
        "last": last,
        "numbers": _NUMBER.findall(_last_text(messages)),
        "params": _canonical_params(params),
    }
    return f"semantic/{KEY_VERSION}/{namespace}/{_digest(document)}"


def ring_head_key(namespace: str) -> str:
    """Table key of a namespace's insertion counter (see ``cache_policy.plan_store``)."""
    return f"cacheidx/{KEY_VERSION}/{namespace}/head"


def ring_slot_key(namespace: str, slot: int) -> str:
    """Table key of one slot of a namespace's insertion ring; its value is a cache key."""
    return f"cacheidx/{KEY_VERSION}/{namespace}/{slot}"
