"""The fault-injecting provider simulator: an aiohttp server speaking OpenAI's and Anthropic's APIs.

Routes::

    POST /v1/chat/completions      OpenAI chat completions (also ``stream: true``, SSE)
    POST /v1/messages              Anthropic Messages API (also ``stream: true``, SSE)
    GET  /v1/models                configured models
    GET  /admin/counts             counters (see counters.py); POST /admin/reset zeroes them
    GET|POST|DELETE /admin/faults  read / install (per model, replacing) / clear (?model=) faults
    GET|POST /admin/models         read / set a model's profile ({"model": m, "latency_ms": ...})
    GET  /admin/requests?id=X      how often request id X arrived; without id: recent ids
    GET  /healthz

Request ids are read from ``x-sluicegate-request-id`` (else ``x-request-id``). Any key is
accepted unless ``require_key`` is set. Headers are never logged (the access log is off).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from connectors.simulator.config import FaultConfig, ModelProfile, SimulatorConfig
from connectors.simulator.state import SimulatorState
from connectors.simulator.wire import (
    AnthropicWire,
    Limits,
    OpenAIWire,
    ParsedRequest,
    Wire,
    WireError,
    make_reply,
)

STATE: web.AppKey[SimulatorState] = web.AppKey("simulator_state", SimulatorState)
CLIENT_CLOSED = 499  # counted when the client went away before the answer (nginx's convention)
_REASONS = {529: "Overloaded", 499: "Client Closed Request"}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        reason=_REASONS.get(status),
        headers=headers,
        content_type="application/json",
    )


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the model APIs -------------------------------------------------------------------------------


def _handler(wire: Wire) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        now = state.now_ms()
        try:
            parsed = wire.parse(json.loads(await request.read()))
        except (ValueError, WireError) as exc:  # json.JSONDecodeError is a ValueError
            state.counters.received("(invalid)", now, None)
            state.counters.finished("(invalid)", 400)
            return _json(wire.error(400, "error", str(exc), None), 400)
        request_id = request.headers.get("x-sluicegate-request-id") or request.headers.get(
            "x-request-id"
        )
        state.counters.received(parsed.model, now, request_id)
        status = CLIENT_CLOSED
        try:
            response = await _answer(request, state, wire, parsed, now)
            status = response.status
            return response
        finally:
            state.counters.finished(parsed.model, status)

    return handle


def _key_ok(request: web.Request, required: str | None) -> bool:
    if not required:
        return True
    bearer = request.headers.get("authorization", "")
    return request.headers.get("x-api-key") == required or bearer == f"Bearer {required}"


async def _answer(
    request: web.Request, state: SimulatorState, wire: Wire, parsed: ParsedRequest, now: int
) -> web.StreamResponse:
    model = parsed.model
    if not _key_ok(request, state.config.require_key):
        message = "Incorrect API key provided. You can find your API key in your dashboard."
        return _json(wire.error(401, "auth", message, None), 401)

    fault = state.pick_fault(model, now)
    if fault is not None:
        if fault.kind != "hang":
            return _fault_response(state, wire, fault, model, now)
        await asyncio.sleep(fault.hang_s)
        now = state.now_ms()

    admitted, limits = state.admit_rpm(model, now)
    headers = wire.limit_headers(limits, now) if limits else {}
    if not admitted:
        assert limits is not None
        wait_ms = limits.reset_requests_ms
        headers.update(_retry_after(wait_ms))
        message = (
            f"Rate limit reached for {model} on requests per min (RPM): Limit "
            f"{limits.limit_requests}. Please try again in {wait_ms}ms."
        )
        return _json(wire.error(429, "rate_limit", message, None), 429, headers)

    semaphore = state.semaphore(model)
    if semaphore is None:
        await _service_time(state, model)
    else:
        async with semaphore:
            await _service_time(state, model)

    reply = make_reply(parsed)
    rid, now_s = state.next_id(), int(time.time())
    headers["x-request-id"] = rid
    if not parsed.stream:
        return _json(wire.success(parsed, reply, rid, now_s), 200, headers)
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/event-stream"
    response.headers["cache-control"] = "no-cache"
    await response.prepare(request)
    for event in wire.stream(parsed, reply, rid, now_s):
        await response.write(event)
    await response.write_eof()
    return response


async def _service_time(state: SimulatorState, model: str) -> None:
    latency = state.profile(model).latency
    if not latency.is_zero:
        delay_ms = latency.sample_ms(state.rng(model))
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)


def _retry_after(wait_ms: int) -> dict[str, str]:
    return {"retry-after": str(max(1, -(-wait_ms // 1000))), "retry-after-ms": str(wait_ms)}


def _fault_response(
    state: SimulatorState, wire: Wire, fault: FaultConfig, model: str, now: int
) -> web.Response:
    headers: dict[str, str] = {"x-request-id": state.next_id()}
    retry_after_s = fault.retry_after_s
    if retry_after_s is None and fault.kind == "rate_limit":
        retry_after_s = 1.0
    if retry_after_s is not None:
        headers.update(_retry_after(round(retry_after_s * 1000)))
    if fault.kind == "rate_limit":
        wait_ms = round((retry_after_s or 0) * 1000)
        rpm = state.profile(model).rpm or 60
        headers.update(wire.limit_headers(Limits(rpm, 0, wait_ms, reset_tokens_ms=wait_ms), now))
    message = fault.message or _DEFAULT_MESSAGES.get(fault.kind, "Simulated failure.")
    return _json(wire.error(fault.status, fault.kind, message, fault.code), fault.status, headers)


_DEFAULT_MESSAGES = {
    "rate_limit": "Rate limit reached (simulated). Please try again later.",
    "quota": "You exceeded your current quota, please check your plan and billing details.",
    "error": "The server had an error while processing your request.",
    "overloaded": "Overloaded",
    "unavailable": "The engine is currently overloaded, please try again later.",
    "outage": "The service is temporarily unavailable (simulated outage).",
}


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "sluicegate-simulator"}
        for m in sorted(state.profiles)
    ]
    return _json({"object": "list", "data": data})


# -- admin --------------------------------------------------------------------------------------


async def _counts(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({**state.counters.snapshot(), "now_ms": state.now_ms()})


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json({"ok": True})


async def _get_faults(request: web.Request) -> web.Response:
    return _json({"faults": request.app[STATE].faults_json()})


async def _set_faults(request: web.Request) -> web.Response:
    """Body: one fault object, or ``{"faults": [...], "replace_all"?: bool, "seed"?: int}``."""
    state = request.app[STATE]
    try:
        body = json.loads(await request.read())
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        unknown = set(body) - {"faults", "replace_all", "seed"}
        if "kind" not in body and unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (profiles: POST /admin/models)")
        items = body.get("faults", []) if "kind" not in body else [body]
        faults = [FaultConfig.from_dict(item) for item in items]
        seed = int(body["seed"]) if "seed" in body and "kind" not in body else None
    except (ValueError, TypeError, AttributeError) as exc:
        return _json({"error": f"bad faults: {exc}"}, 400)
    if body.get("replace_all") and "kind" not in body:
        state.clear_faults()
    if seed is not None:
        state.reseed(seed)
    state.set_faults(faults)
    return _json({"faults": state.faults_json()})


async def _clear_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.clear_faults(request.query.get("model"))
    return _json({"faults": state.faults_json()})


async def _get_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    profiles = {"*": state.default.to_dict()}
    profiles.update((m, p.to_dict()) for m, p in sorted(state.profiles.items()))
    return _json({"models": profiles})


async def _set_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = dict(json.loads(await request.read()))
        model = str(body.pop("model"))
        state.set_profile(model, ModelProfile.from_dict(body))
    except (ValueError, TypeError, KeyError) as exc:
        return _json({"error": f"bad profile: {exc!r}"}, 400)
    return await _get_models(request)


async def _requests(request: web.Request) -> web.Response:
    counters = request.app[STATE].counters
    request_id = request.query.get("id")
    if request_id is not None:
        return _json({"id": request_id, "seen": counters.seen(request_id)})
    limit = int(request.query.get("limit", "100"))
    return _json({"recent": counters.recent_ids(limit)})


async def _health(request: web.Request) -> web.Response:
    return _json({"ok": True})


def build_app(config: SimulatorConfig, now_ms: Callable[[], int] | None = None) -> web.Application:
    """The simulator as an aiohttp application; ``now_ms`` drives fault windows and RPM."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE] = SimulatorState(config, now_ms or _system_ms)
    app.router.add_post("/v1/chat/completions", _handler(OpenAIWire))
    app.router.add_post("/v1/messages", _handler(AnthropicWire))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/admin/counts", _counts)
    app.router.add_post("/admin/reset", _reset)
    app.router.add_get("/admin/faults", _get_faults)
    app.router.add_post("/admin/faults", _set_faults)
    app.router.add_delete("/admin/faults", _clear_faults)
    app.router.add_get("/admin/models", _get_models)
    app.router.add_post("/admin/models", _set_model)
    app.router.add_get("/admin/requests", _requests)
    app.router.add_get("/healthz", _health)
    return app


@dataclass
class SimulatorServer:
    """A running simulator at ``base_url`` = ``http://host:port`` (OpenAI's: ``base_url/v1``)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> SimulatorState:
        return self.runner.app[STATE]

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0) -> SimulatorServer:
    """Start the simulator on ``host:port`` (0: a free port) in the running event loop."""
    runner = web.AppRunner(
        build_app(config), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]
    return SimulatorServer(runner, host, bound_port)


def run_simulator(host: str, port: int, config_path: str | None = None) -> None:
    """Run the simulator until SIGINT or SIGTERM (the ``sluicegate simulator`` command)."""
    config = SimulatorConfig.from_toml(config_path) if config_path else SimulatorConfig()

    async def main() -> None:
        server = await serve(config, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"simulator listening on {server.base_url}", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            await server.close()

    asyncio.run(main())
