"""Issue 6: the RocksDB response cache, end to end on a real broker and simulator."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx

from connectors.client import SluicegateClient
from tests.integration.conftest import ROOT, wait_until


def _ask(prompt: str, tenant: str = "t1", **extra) -> dict:
    return {
        "tenant": tenant,
        "model": "chat",
        "temperature": 0.0,
        "max_tokens": 40,
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }


def _calls(simulator) -> int:
    return int(simulator.counts()["received"])


async def test_repeats_are_served_from_cache_per_tenant_with_every_cache_mode(
    make_stack, simulator
):
    stack = make_stack()
    stack.start_worker()
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        first = await client.complete(timeout=60, **_ask("What is a cache?"))
        again = await client.complete(timeout=60, **_ask("What is a cache?"))
        assert first.status == "ok" and first.cost_micros > 0
        assert again.status == "cached" and again.cache_kind == "exact"
        assert again.content == first.content
        assert again.cost_micros == 0 and again.cost_saved_micros == first.cost_micros

        # Tenant isolation: the same prompt from another tenant is a miss.
        other = await client.complete(timeout=60, **_ask("What is a cache?", tenant="t2"))
        assert other.status == "ok" and not other.cached

        # Sampling (temperature absent = 1.0) is not cached by default.
        creative = _ask("Write a poem")
        del creative["temperature"]
        a = await client.complete(timeout=60, **creative)
        b = await client.complete(timeout=60, **creative)
        assert (a.status, b.status) == ("ok", "ok")

        # bypass: neither read nor written.
        bypass = await client.complete(timeout=60, **_ask("What is a cache?", cache_mode="bypass"))
        assert bypass.status == "ok"
        fresh = await client.complete(timeout=60, **_ask("bypassed question", cache_mode="bypass"))
        after = await client.complete(timeout=60, **_ask("bypassed question"))
        assert fresh.status == "ok" and after.status == "ok"

        # refresh: not read, but written.
        refreshed = await client.complete(
            timeout=60, **_ask("What is a cache?", cache_mode="refresh")
        )
        assert refreshed.status == "ok"
        assert (await client.complete(timeout=60, **_ask("What is a cache?"))).status == "cached"

        # only_if_cached: a hit is served; a miss is rejected without calling a provider.
        calls = _calls(simulator)
        hit = await client.complete(
            timeout=60, **_ask("What is a cache?", cache_mode="only_if_cached")
        )
        miss = await client.complete(timeout=60, **_ask("never asked", cache_mode="only_if_cached"))
        assert hit.status == "cached"
        assert (miss.status, miss.reason) == ("rejected", "cache_miss")
        assert _calls(simulator) == calls

        # TTL: an entry stored for 300 ms is a miss once that has passed.
        short = await client.complete(timeout=60, **_ask("short lived", cache_ttl_ms=300))
        assert short.status == "ok"
        await asyncio.sleep(0.5)
        expired = await client.complete(timeout=60, **_ask("short lived"))
        assert expired.status == "ok" and not expired.cached


async def test_errors_are_never_cached(make_stack, simulator):
    stack = make_stack(
        lambda c: c["routes"].__setitem__(
            "solo", {"primary": "sim/sim-large", "static_message": "down for now"}
        )
    )
    stack.start_worker()
    simulator.set_faults({"kind": "error", "model": "sim-large", "status": 500})
    try:
        async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
            ask = _ask("this will fail") | {"model": "solo"}
            failed = await client.complete(timeout=60, **ask)
            assert failed.status == "degraded" and failed.content == "down for now"
            simulator.reset()
            healthy = await client.complete(timeout=60, **ask)
            assert healthy.status == "ok" and not healthy.cached
    finally:
        simulator.reset()


async def test_fifty_identical_requests_cause_one_provider_call(make_stack, simulator):
    stack = make_stack()
    stack.start_worker()
    simulator.set_model("sim-large", latency_ms=500)
    try:
        async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
            before = _calls(simulator)
            responses = await asyncio.gather(
                *(client.complete(timeout=60, **_ask("the same question")) for _ in range(50))
            )
            assert _calls(simulator) - before == 1
    finally:
        simulator.reset()
    statuses = sorted(r.status for r in responses)
    assert statuses.count("ok") == 1 and statuses.count("cached") == 49
    kinds = {r.cache_kind for r in responses if r.cached}
    assert kinds <= {"coalesced", "exact"} and "coalesced" in kinds
    assert len({r.content for r in responses}) == 1


async def test_cache_survives_a_worker_restart_and_purge_empties_it(make_stack):
    stack = make_stack()
    worker = stack.start_worker("w1")
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        first = await client.complete(timeout=60, **_ask("remember me"))
        assert first.status == "ok"
        worker.terminate()
        stack.start_worker("w2")
        again = await client.complete(timeout=60, **_ask("remember me"))
        assert again.status == "cached", again.record

        stats = httpx.get(f"http://127.0.0.1:{stack.workers[-1].port}/cache", timeout=5).json()
        assert stats["t1"]["hits"] >= 1

        subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "--config",
                str(stack.config_path),
                "cache",
                "purge",
                "--tenant",
                "t1",
            ],
            cwd=ROOT,
            check=True,
            timeout=60,
        )

        async def purged() -> bool:
            probe = await client.complete(
                timeout=60, **_ask("remember me", cache_mode="only_if_cached")
            )
            return probe.status == "rejected"

        deadline = asyncio.get_running_loop().time() + 30
        while not await purged():
            assert asyncio.get_running_loop().time() < deadline, (
                "purge never applied: "
                + httpx.get(f"http://127.0.0.1:{stack.workers[-1].port}/cache", timeout=5).text
                + httpx.get(
                    f"http://127.0.0.1:{stack.workers[-1].port}/table/cache-index/", timeout=5
                ).text
                + httpx.get(
                    f"http://127.0.0.1:{stack.workers[-1].port}/table/cache/", timeout=5
                ).text
            )
            await asyncio.sleep(0.2)
        after = await client.complete(timeout=60, **_ask("remember me"))
        assert after.status == "ok" and not after.cached


async def test_semantic_cache_answers_paraphrases_not_unrelated_prompts(make_stack):
    def semantic_route(config: dict) -> None:
        config["routes"]["faq"] = {
            "primary": "sim/sim-large",
            "cache": {"semantic": True, "semantic_threshold": 0.9},
        }

    stack = make_stack(semantic_route)
    worker = stack.start_worker()
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        ask = lambda text: _ask(text) | {"model": "faq"}  # noqa: E731
        original = await client.complete(timeout=60, **ask("How do I reset my password?"))
        assert original.status == "ok"

        def indexed() -> bool:  # the embedding is added in the background
            stats = httpx.get(f"http://127.0.0.1:{worker.port}/cache", timeout=5).json()
            return bool(stats.get("t1", {}).get("semantic_indexed"))

        wait_until(indexed, 60, "the original prompt's embedding to be indexed")
        paraphrase = await client.complete(timeout=60, **ask("How can I reset my password?"))
        assert paraphrase.cache_kind == "semantic", paraphrase.record
        assert paraphrase.content == original.content
        assert paraphrase.record["similarity"] >= 0.9
        unrelated = await client.complete(timeout=60, **ask("What is the capital of France?"))
        assert unrelated.status == "ok" and not unrelated.cached
