"""The OpenAI-compatible HTTP ingress: an aiohttp server that turns HTTP calls into Kafka requests.

A separate, stateless process; run as many as needed behind a load balancer:

    POST /v1/chat/completions   an OpenAI chat completion, answered by the workers via Kafka
    GET  /v1/models[/{id}]      the config's route and model names this key may use
    GET  /healthz               200 once the producer and the reply reader run, else 503
    GET  /metrics               Prometheus: sluicegate_ingress_requests_total{endpoint, code,
                                status, reason}, sluicegate_ingress_request_seconds (histogram),
                                sluicegate_ingress_in_flight, ..._unmatched_replies_total

Design:

* Auth (auth.py): ``Authorization: Bearer <key>``; the key's SHA-256 is compared in
  constant time with every tenant's ``api_key_sha256``. No key or an unknown one: 401.
  Keys are never logged nor echoed.
* Request headers: ``x-sluicegate-priority`` (default normal), ``x-sluicegate-feature``
  (default "default"), ``x-sluicegate-cache`` (default | bypass | refresh |
  only_if_cached), ``x-sluicegate-cache-ttl-ms``, ``x-sluicegate-timeout-ms`` (the
  deadline; default: the priority's deadline in the config). A priority above the
  tenant's ``max_priority`` is 403 ``permission_error`` (not 400: the request is
  well-formed, the key lacks the right; the SDK raises PermissionDeniedError). A tenant
  cannot raise its own priority.
* Body (wire.py): at most 1 MiB (413), JSON (else 400 ``invalid_json``), mapped to a
  ChatRequest record. An unknown model, or one the tenant may not use, is 404
  ``model_not_found`` as at OpenAI. Everything else is validated by the worker (400).
* Kafka (bridge.py): published to ``<prefix>.requests.<priority>`` keyed by tenant; the
  answer comes back on this instance's own reply topic ``<prefix>.replies.ingress-<id>``
  (``--instance-id``, default ``<hostname>-<port>`` so a restart reuses the topic). A
  request waits until its deadline plus 5 s, then 504 (not retried by the SDK: the
  request may still be answered, and a retry would be a second request).
* Answers (errors.py has the full table): 200 ``chat.completion`` with the model actually
  used, usage and ``x-sluicegate-status``, ``-cache`` (hit/miss/semantic/stale),
  ``-request-id``, ``-cost-micros``; 429 rate limited or over budget; 400 invalid; 503
  shed or failed; 504 only-if-cached miss; all in OpenAI's error shape with
  ``retry-after`` where it applies, so the SDK raises RateLimitError etc.
* Streaming (``"stream": true``): the worker completes the request as usual, so usage and
  cost are always recorded by the worker, even when the client disconnects mid-stream;
  the ingress then sends the completed content as ``chat.completion.chunk`` server-sent
  events in word-sized deltas (a role chunk, content deltas, a finish_reason chunk, a usage
  chunk when ``stream_options.include_usage``, then ``[DONE]``). The outcome is known
  before the stream starts, so a streamed request that is rate limited is a plain 429.
  A client disconnect never cancels the Kafka request (handlers are not cancelled, and
  the request is already published). The cost: no early first token.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from connectors.ingress import errors, wire
from connectors.ingress.auth import KeyTable, bearer_token, priority_allowed
from connectors.ingress.bridge import KafkaBridge
from connectors.ingress.errors import ApiError
from schemas.errors import SluicegateError
from streams.config import SluicegateConfig, TenantConfig

log = logging.getLogger("sluicegate.ingress")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
Handled = tuple[web.StreamResponse, str, str]  # the response, its status and reason labels


@dataclass(frozen=True)
class IngressSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    instance_id: str | None = None  # None: <hostname>-<port>
    max_body_bytes: int = 1 << 20
    reply_margin_s: float = 5.0
    reply_retention_ms: int = 3_600_000

    def resolved_instance_id(self) -> str:
        raw = self.instance_id or f"{socket.gethostname()}-{self.port}"
        return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:100]


class Metrics:
    """The ingress's Prometheus series, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sluicegate_ingress_requests",
            "API requests answered, by endpoint, HTTP code, Sluicegate status and reason "
            "(status 'ingress' when the ingress answered by itself; reason = its error code)",
            ["endpoint", "code", "status", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sluicegate_ingress_request_seconds",
            "Time from request to the last byte of the answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "sluicegate_ingress_in_flight", "API requests being handled", registry=self.registry
        )
        self.unmatched = Counter(
            "sluicegate_ingress_unmatched_replies",
            "Replies nobody waited for (duplicates, or after the request timed out)",
            registry=self.registry,
        )


@dataclass(frozen=True)
class Admitted:
    """A chat request that passed the ingress's checks, ready for Kafka."""

    tenant: TenantConfig
    call: wire.ChatCall
    wait_s: float  # until the deadline, plus the margin


class Ingress:
    """The HTTP handlers; ``application()`` wires them to the Kafka bridge's lifecycle."""

    def __init__(self, config: SluicegateConfig, settings: IngressSettings) -> None:
        self.config = config
        self.settings = settings
        self.instance_id = settings.resolved_instance_id()
        self.keys = KeyTable.from_tenants({n: t.api_key_sha256 for n, t in config.tenants.items()})
        if not len(self.keys):
            log.warning("no tenant has api_key_sha256: every API request will be refused")
        self.metrics = Metrics()
        self.bridge = KafkaBridge(
            config,
            config.topic(f"replies.ingress-{self.instance_id}"),
            retention_ms=settings.reply_retention_ms,
            on_unmatched=self.metrics.unmatched.inc,
        )

    def application(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[_openai_errors]
        )
        app.router.add_post("/v1/chat/completions", self._observed("chat", self.chat))
        app.router.add_get("/v1/models", self._observed("models", self.models))
        app.router.add_get("/v1/models/{model:.+}", self._observed("model", self.model))
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        await self.bridge.start()
        log.info("ingress %s answers on %s", self.instance_id, self.bridge.reply_topic)

    async def _stop(self, _app: web.Application) -> None:
        await self.bridge.close()

    def _observed(
        self, endpoint: str, handler: Callable[[web.Request], Awaitable[Handled]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap a handler with the request counter, the latency histogram, in-flight gauge."""

        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            self.metrics.in_flight.inc()
            try:
                response, status, reason = await handler(request)
            except Exception:
                log.exception("%s request failed inside the ingress", endpoint)
                response, status, reason = _refused(errors.internal())
            finally:
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(response.status), status, reason).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            return response

        return handle

    # -- handlers ----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> Handled:
        admitted = await self._admit(request)
        if isinstance(admitted, ApiError):
            return _refused(admitted)
        record = admitted.call.record
        try:
            reply = await self.bridge.call(record, admitted.wait_s)
        except MessageSizeTooLargeError:
            return _refused(errors.too_large("the broker's message size limit"))
        except (KafkaError, SluicegateError) as exc:
            log.warning("could not publish request %s: %s", record["request_id"], exc)
            return _refused(errors.unavailable())
        if reply is None:
            return _refused(errors.timeout(admitted.wait_s, record["request_id"]))
        status, reason = str(reply["status"]), str(reply.get("reason") or "")
        if errors.http_status(status, reason) != 200:
            limits = {"requests": admitted.tenant.rpm, "tokens": admitted.tenant.tpm}
            known = {kind: n for kind, n in limits.items() if n is not None}
            return _render(wire.error_for_response(reply, known)), status, reason
        if admitted.call.stream:
            streamed = await _stream(request, reply, record["model"], admitted.call.include_usage)
            return streamed, status, reason
        completion = wire.completion(reply, record["model"])
        return web.json_response(completion, headers=wire.response_headers(reply)), status, reason

    async def _admit(self, request: web.Request) -> Admitted | ApiError:
        """Everything checked before Kafka: key, headers, priority, body, model."""
        who = self._tenant(request)
        if isinstance(who, ApiError):
            return who
        name, tenant = who
        hints = wire.parse_hints(request.headers)
        if isinstance(hints, ApiError):
            return hints
        if not priority_allowed(hints.priority, tenant.max_priority):
            return errors.priority_not_allowed(hints.priority, tenant.max_priority, wire.H_PRIORITY)
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return errors.too_large(f"{self.settings.max_body_bytes} bytes")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return errors.bad_json(str(exc))
        now_ms = int(time.time() * 1000)
        wait_ms = hints.timeout_ms or int(getattr(self.config.deadlines, hints.priority) * 1000)
        call = wire.chat_request(
            body,
            tenant=name,
            hints=hints,
            request_id=uuid.uuid4().hex,
            reply_to=self.bridge.reply_topic,
            now_ms=now_ms,
            deadline_ms=now_ms + wait_ms,
            metadata={"ingress": self.instance_id},
        )
        if isinstance(call, ApiError):
            return call
        if not self._offers(tenant, call.record["model"]):
            return errors.model_not_found(call.record["model"])
        return Admitted(tenant, call, wait_ms / 1000 + self.settings.reply_margin_s)

    def _tenant(self, request: web.Request) -> tuple[str, TenantConfig] | ApiError:
        name = self.keys.tenant_for(bearer_token(request.headers.get("Authorization")))
        tenant = self.config.tenants.get(name) if name else None
        if name is None or tenant is None:
            return errors.unauthorized()
        return name, tenant

    async def models(self, request: web.Request) -> Handled:
        who = self._tenant(request)
        if isinstance(who, ApiError):
            return _refused(who)
        _name, tenant = who
        data = [self._model_entry(m) for m in self.config.model_names() if self._offers(tenant, m)]
        return web.json_response({"object": "list", "data": data}), "ingress", ""

    async def model(self, request: web.Request) -> Handled:
        who = self._tenant(request)
        if isinstance(who, ApiError):
            return _refused(who)
        _name, tenant = who
        model = request.match_info["model"]
        if not self._offers(tenant, model):
            return _refused(errors.model_not_found(model))
        return web.json_response(self._model_entry(model)), "ingress", ""

    def _offers(self, tenant: TenantConfig, model: str) -> bool:
        return self.config.resolve_route(model) is not None and tenant.allows_model(model)

    def _model_entry(self, model: str) -> dict[str, Any]:
        route = self.config.resolve_route(model)
        owner = (
            "sluicegate" if route is None or model in self.config.routes else route.primary.provider
        )
        return {"id": model, "object": "model", "created": 0, "owned_by": owner}

    async def healthz(self, _request: web.Request) -> web.Response:
        body = {
            "status": "ok" if self.bridge.ready else "starting",
            "instance": self.instance_id,
            "reply_topic": self.bridge.reply_topic,
            "waiting": self.bridge.waiting,
        }
        return web.json_response(body, status=200 if self.bridge.ready else 503)

    async def metrics_page(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _render(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


def _refused(error: ApiError) -> Handled:
    """An answer the ingress gives by itself: labelled status 'ingress', reason = its code."""
    return _render(error), "ingress", error.code or str(error.status)


async def _stream(
    request: web.Request, reply: dict[str, Any], model: str, include_usage: bool
) -> web.StreamResponse:
    """The completed answer as server-sent events; a client that left just stops the writes."""
    headers = {**wire.response_headers(reply), "Cache-Control": "no-cache"}
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    await response.prepare(request)
    try:
        for chunk in wire.stream_chunks(reply, model, include_usage):
            await response.write(wire.sse(chunk))
        await response.write(wire.sse("[DONE]"))
        await response.write_eof()
    except ConnectionResetError:
        log.info("the client left while request %s was streamed", reply["request_id"])
    return response


@web.middleware
async def _openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own errors (unknown path, wrong method) in OpenAI's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return _render(ApiError(exc.status, f"{exc.reason}: {request.method} {request.path}", kind))


async def start_ingress(config: SluicegateConfig, settings: IngressSettings) -> web.AppRunner:
    """Serve in the running loop (tests, embedding); ``await runner.cleanup()`` stops it."""
    runner = web.AppRunner(Ingress(config, settings).application())
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    return runner


def run_ingress(config: SluicegateConfig, settings: IngressSettings) -> None:
    """Serve until SIGINT/SIGTERM (the ``sluicegate ingress`` command).

    No per-request access log (it cost a sizeable share of the ingress's CPU per request):
    every request and response is on Kafka, and /metrics counts them; errors are logged."""
    app = Ingress(config, settings).application()
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        shutdown_timeout=30,
        access_log=None,
    )
