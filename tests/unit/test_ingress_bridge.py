"""Replies are matched to waiting requests by id; duplicates and strays are dropped."""

from __future__ import annotations

import asyncio
from typing import Any

from connectors.ingress.bridge import KafkaBridge
from schemas import registry
from streams.config import parse_config

CONFIG = parse_config(
    {
        "providers": {
            "sim": {
                "base_url": "http://127.0.0.1:1/v1",
                "models": {"m": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1}},
            }
        },
        "tenants": {"acme": {}},
    }
)


def reply(request_id: str, content: str) -> bytes:
    record: dict[str, Any] = {
        "request_id": request_id,
        "status": "ok",
        "content": content,
        "created_at": 1,
    }
    return registry.encode(registry.CHAT_RESPONSE, record)


def bridge(unmatched: list[int]) -> KafkaBridge:
    return KafkaBridge(CONFIG, "sg.replies.ingress-x", on_unmatched=lambda: unmatched.append(1))


async def test_a_reply_completes_the_request_waiting_for_its_id() -> None:
    unmatched: list[int] = []
    b = bridge(unmatched)
    first = asyncio.get_running_loop().create_future()
    second = asyncio.get_running_loop().create_future()
    b._waiting.update({"r1": first, "r2": second})
    b._deliver(reply("r2", "two"))
    assert second.done() and second.result()["content"] == "two"
    assert not first.done()
    assert unmatched == []


async def test_a_duplicate_reply_is_dropped_and_counted() -> None:
    unmatched: list[int] = []
    b = bridge(unmatched)
    waiting = asyncio.get_running_loop().create_future()
    b._waiting["r1"] = waiting
    b._deliver(reply("r1", "first"))
    b._deliver(reply("r1", "second"))
    assert waiting.result()["content"] == "first"
    assert unmatched == [1]


async def test_a_reply_nobody_waits_for_is_counted_and_bad_bytes_are_ignored() -> None:
    unmatched: list[int] = []
    b = bridge(unmatched)
    b._deliver(reply("gone", "late"))
    b._deliver(b"\x00garbage")
    assert unmatched == [1]
    assert b.waiting == 0 and not b.ready
