"""Issue 8: the OpenAI-compatible HTTP ingress, driven by the official ``openai`` SDK.

A real broker, real worker processes and the simulator; the ingress runs as a process
started the way an operator starts it (``sluicegate --config F ingress --port P``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.ingress.auth import hash_key
from tests.integration.conftest import ROOT, Stack, free_port, wait_until

KEY = "sk-sluicegate-test-t1"
LIMITED_KEY = "sk-sluicegate-test-t2"
MakeStack = Callable[..., Stack]
PROMPT: list[Any] = [
    {"role": "user", "content": "Tell me about the sluice gates of the Netherlands."}
]


def with_keys(config: dict[str, Any]) -> None:
    config["tenants"]["t1"].update(max_priority="high", api_key_sha256=[hash_key(KEY)])
    config["tenants"]["t2"].update(rpm=2, api_key_sha256=[hash_key(LIMITED_KEY)])


@dataclass
class IngressProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sdk(self, key: str = KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def requests_total(self, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "sluicegate_ingress_requests"
            for sample in family.samples
            if sample.name.endswith("_total")
            and all(sample.labels.get(k) == v for k, v in labels.items())
        )


StartIngress = Callable[[Stack], "IngressProcess"]


@pytest.fixture
def start_ingress() -> Iterator[Callable[[Stack], IngressProcess]]:
    started: list[IngressProcess] = []

    def start(stack: Stack) -> IngressProcess:
        port = free_port()
        log_path = stack.tmp / f"ingress-{port}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - lives with the process
        command = [sys.executable, "-m", "streams.cli", "--config", str(stack.config_path)]
        command += ["ingress", "--port", str(port), "--instance-id", stack.prefix]
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        ingress = IngressProcess(port, process, log_path)
        started.append(ingress)

        def healthy() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{ingress.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, "the ingress to be healthy")
        return ingress

    yield start
    for ingress in started:
        ingress.process.terminate()
        try:
            ingress.process.wait(15)
        except subprocess.TimeoutExpired:
            ingress.process.kill()


async def test_openai_sdk_gets_a_completion_and_a_stream_with_usage(
    make_stack: MakeStack, start_ingress: StartIngress
) -> None:
    stack = make_stack(with_keys)
    stack.start_worker()
    ingress = start_ingress(stack)
    before = ingress.requests_total(endpoint="chat", code="200")
    async with ingress.sdk() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat",
            messages=PROMPT,
            max_tokens=40,
            extra_headers={"x-sluicegate-priority": "high", "x-sluicegate-feature": "search"},
        )
        completion = raw.parse()
        stream = await client.chat.completions.create(
            model="chat",
            messages=PROMPT,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-sluicegate-cache": "bypass"},
        )
        chunks = [chunk async for chunk in stream]

    assert raw.status_code == 200
    assert raw.headers["x-sluicegate-status"] == "ok"
    assert raw.headers["x-sluicegate-cache"] == "miss"
    assert int(raw.headers["x-sluicegate-cost-micros"]) > 0
    request_id = raw.headers["x-sluicegate-request-id"]
    assert completion.id == f"chatcmpl-{request_id}"
    assert completion.model == "sim-large"  # the model actually used, not the route
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content  # same deterministic answer
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == completion.usage.total_tokens
    assert chunks[-1].id != completion.id  # a second request, not a replay of the first

    assert ingress.requests_total(endpoint="chat", code="200", status="ok") >= before + 2


async def test_wrong_or_missing_key_raises_authentication_error(
    make_stack: MakeStack, start_ingress: StartIngress
) -> None:
    ingress = start_ingress(make_stack(with_keys))
    for key in ("sk-wrong", LIMITED_KEY + "x"):
        async with ingress.sdk(key) as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.chat.completions.create(model="chat", messages=PROMPT)
        assert caught.value.code == "invalid_api_key"
        assert key not in caught.value.response.text  # a key is never echoed
    anonymous = httpx.post(f"{ingress.url}/v1/chat/completions", json={}, timeout=5)
    assert anonymous.status_code == 401
    assert set(anonymous.json()["error"]) == {"message", "type", "param", "code"}
    assert ingress.requests_total(endpoint="chat", code="401") == 3
    assert KEY not in ingress.log_path.read_text()


async def test_priority_above_the_tenants_max_is_refused(
    make_stack: MakeStack, start_ingress: StartIngress
) -> None:
    ingress = start_ingress(make_stack(with_keys))  # t1 may use at most "high"
    async with ingress.sdk() as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(
                model="chat", messages=PROMPT, extra_headers={"x-sluicegate-priority": "critical"}
            )
    assert caught.value.code == "priority_not_allowed"
    assert "critical" in caught.value.message


async def test_malformed_requests_get_clear_4xx_errors(
    make_stack: MakeStack, start_ingress: StartIngress
) -> None:
    ingress = start_ingress(make_stack(with_keys))
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{ingress.url}/v1/chat/completions"

    broken = httpx.post(url, content=b'{"model": "chat", "messages": [', headers=auth, timeout=5)
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_json"
    assert "not valid JSON" in broken.json()["error"]["message"]

    huge = httpx.post(url, content=b"x" * ((1 << 20) + 1024), headers=auth, timeout=10)
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "request_too_large"

    async with ingress.sdk() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="chat", messages=[])
        assert caught.value.param == "messages"
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="no-such-model", messages=PROMPT)
        models = [m.id async for m in client.models.list()]
    assert "chat" in models and "sim/sim-large" in models


async def test_no_answer_before_the_deadline_is_a_504(
    make_stack: MakeStack, start_ingress: StartIngress
) -> None:
    ingress = start_ingress(make_stack(with_keys))  # no worker: nobody answers
    async with ingress.sdk() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(
                model="chat", messages=PROMPT, extra_headers={"x-sluicegate-timeout-ms": "300"}
            )
    assert caught.value.status_code == 504
    assert caught.value.response.headers["x-should-retry"] == "false"


async def test_tenant_over_its_rpm_gets_rate_limit_error_with_retry_after(
    make_stack: MakeStack, start_ingress: StartIngress
) -> None:
    stack = make_stack(with_keys)  # t2: rpm = 2
    stack.start_worker()
    ingress = start_ingress(stack)
    answers: list[Any] = []
    async with ingress.sdk(LIMITED_KEY) as client:
        for i in range(4):
            try:
                answers.append(
                    await client.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": f"question {i}"}]
                    )
                )
            except openai.RateLimitError as exc:
                answers.append(exc)
    limited = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert len(answers) - len(limited) == 2, answers
    assert len(limited) == 2
    assert all(a.code == "rate_limit_exceeded" for a in limited)
    assert all(int(a.response.headers["retry-after"]) >= 1 for a in limited)
    assert limited[0].response.headers["x-ratelimit-limit-requests"] == "2"
    assert limited[0].response.headers["x-sluicegate-reason"] == "rate_limited"
