"""Build the Faust app: topics, agents and web endpoints, wired to a Gateway.

Thin glue. The gateway's request reader (streams/intake.py) hands each request record to
the gateway, which decides and answers; Faust runs the tables, the usage and cache agents,
the timers and the web views. Built by a factory, never at import,
so tests and several workers in one machine get apps of their own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View
from mode.utils.times import want_seconds

from schemas import registry
from schemas.registry import SchemaError
from streams.config import PRIORITIES, SluicegateConfig
from streams.dashboard import install_web
from streams.intake import RequestReader
from streams.policies.scheduler import Priority
from streams.topics import TopicSpec
from streams.usage import UsageTotals
from streams.worker import Gateway

log = logging.getLogger("sluicegate.app")

# RocksDB sized for a small machine: Faust's per-partition defaults are a 2 GiB block cache
# and 3 x 64 MiB write buffers, for every partition of every table.
ROCKSDB_SMALL = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 8 * 1024 * 1024,
    "block_cache_size": 16 * 1024 * 1024,
    "block_cache_compressed_size": 0,
    "bloom_filter_size": 10,
    "max_open_files": 256,
}


def build_app(
    config: SluicegateConfig, *, web_port: int | None = None
) -> tuple[faust.App, Gateway]:
    w = config.worker
    datadir = Path(w.data_dir).resolve()
    app = faust.App(
        w.app_id,
        broker=f"kafka://{config.kafka.bootstrap_servers}",
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=config.kafka.partitions,
        topic_replication_factor=config.kafka.replication_factor,
        topic_allow_declare=True,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=w.commit_interval_s,
        # Keep the backlog in Kafka, not in worker memory: a small per-partition buffer.
        stream_buffer_maxsize=64,
        broker_max_poll_records=200,
        # A killed worker's partitions move after 10 s, not Faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=30.0,
        producer_acks=-1,
        producer_linger=0.001,
        producer_request_timeout=30.0,
        web_enabled=True,
        web_bind=w.web_host,
        web_host=w.web_host,
        web_port=web_port if web_port is not None else w.web_port,
        web_in_thread=False,
        table_cleanup_interval=30.0,
    )
    gateway = Gateway(config, app)
    # Per-tenant admission state: rate-limit windows and the budget ledger. Keyed by tenant
    # and written while handling that tenant's request, so it lives on the tenant's
    # partition; restored from its changelog after a restart or a rebalance.
    gateway.tenant_state = app.Table(
        "tenant-state",
        default=None,
        partitions=config.kafka.partitions,
        options=ROCKSDB_SMALL,
    )

    def raw_topic(name: str, **options: Any) -> Any:
        """A topic of Avro-framed bytes. The serializers are explicit: with bytes types
        Faust still falls back to the app's json codec."""
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=config.kafka.partitions,
            **options,
        )

    # Faust subscribes to the request topics, so its group assignment decides which worker
    # owns which partitions (co-partitioned with the tables), but their records are read
    # by the gateway's own reader (streams/intake.py). Whatever Faust still fetches of them
    # (between a rebalance and the next re-pause) is dropped here, never acked.
    request_topics = {config.request_topic(p): Priority.from_name(p) for p in PRIORITIES}
    subscribed = app.topic(
        *request_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=config.kafka.partitions,
        acks=False,
    )

    @app.agent(subscribed, name="sluicegate.requests.assignment")
    async def request_assignment(stream: Any) -> None:
        async for _ in stream.noack():
            pass

    reader = gateway.reader = RequestReader(
        app,
        config.kafka.bootstrap_servers,
        request_topics,
        gateway.intake,
        gateway.may_take,
    )

    @app.task
    async def read_requests() -> None:
        await reader.start()
        try:
            await reader.run()
        finally:
            await reader.stop()

    @app.task
    async def dispatcher() -> None:
        await gateway.dispatch_forever()

    gateway.cache.entries = app.Table(
        "cache", default=None, partitions=config.kafka.partitions, options=ROCKSDB_SMALL
    )
    gateway.cache.index = app.Table(
        "cache-index", default=None, partitions=config.kafka.partitions, options=ROCKSDB_SMALL
    )
    commands = raw_topic(config.topic("cache.commands"))

    @app.agent(commands, name="sluicegate.cache.commands")
    async def cache_commands(stream: Any) -> None:
        """Cache purges arrive keyed by tenant, so they run on the tenant's partition: the
        only place its RocksDB-backed cache may be written (notes: not from a view)."""
        async for value in stream:
            try:
                command = json.loads(value)
                gateway.cache.purge(str(command["tenant"]), int(command["before_ms"]))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring a bad cache command %r: %s", value[:200], exc)

    usage_topic = raw_topic(config.topic("usage"))
    totals = gateway.usage = UsageTotals(app, config, ROCKSDB_SMALL)

    @app.agent(usage_topic, name="sluicegate.usage.totals")
    async def usage_totals(stream: Any) -> None:
        # In batches: the windowed tables are written once per scope and minute per batch.
        async for events in stream.take_events(500, within=0.5):
            batch = []
            for event in events:
                try:
                    batch.append((event, registry.decode(registry.USAGE_EVENT, event.value)))
                except SchemaError as exc:
                    log.warning("skipping an undecodable usage event: %s", exc)
            totals.add_batch(batch)

    @app.page("/costs")
    class CostsView(View):
        async def get(self, request: Request) -> Response:
            kind = request.query.get("window", "day")
            if kind not in totals.windows:
                return self.json(
                    {"error": f"window must be one of {sorted(totals.windows)}"}, status=400
                )
            return self.json(
                {
                    "window": kind,
                    "rows": totals.view(kind),
                    "duplicates_dropped": totals.duplicates,
                    "budgets": gateway.budgets(),
                }
            )

    @app.page("/cache")
    class CacheView(View):
        async def get(self, request: Request) -> Response:
            return self.json(gateway.cache.status())

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        gateway.on_partitions_assigned(set(args[0]) if args else set(kwargs.get("assigned", ())))
        _keep_faust_off(app.consumer, request_topics)

    @app.timer(w.commit_interval_s)
    async def commit_offsets() -> None:
        await gateway.commit()
        _keep_faust_off(app.consumer, request_topics)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        gateway.on_partitions_revoked(set(args[0]) if args else set(kwargs.get("revoked", ())))

    @app.page("/status")
    class StatusView(View):
        async def get(self, request: Request) -> Response:
            return self.json(gateway.status())

    @app.page("/budgets")
    class BudgetsView(View):
        async def get(self, request: Request) -> Response:
            return self.json(gateway.budgets())

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            request_topics = {config.request_topic(p) for p in PRIORITIES}
            settled = reader.ready()  # assignment settled, tables restored, reading
            assigned = app.consumer.assignment() if app.consumer and settled else set()
            owned = sorted(
                f"{tp.topic}:{tp.partition}" for tp in assigned if tp.topic in request_topics
            )
            return self.json({"ok": True, "request_partitions": len(owned), "owned": owned})

    install_web(app, gateway)  # /metrics, /dashboard, /dashboard/data
    app.gateway = gateway  # type: ignore[attr-defined]
    return app, gateway


def changelog_specs(app: faust.App) -> list[TopicSpec]:
    """Every table's changelog topic (windowed tables' key indexes included), as Faust
    would declare it. Created before the worker starts (streams/cli.py): when Faust
    declares them itself, a worker can cache the metadata of a changelog not created yet
    (0 partitions), and its first write to that table fails with PartitionsMismatch."""
    specs = []
    for table in app.tables.values():
        topic = table.changelog_topic
        flags = (("compact", topic.compacting), ("delete", topic.deleting))
        policies = [policy for policy, on in flags if on]
        config = {"cleanup.policy": ",".join(policies or ["compact"])}
        if topic.retention is not None:
            config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
        specs.append(TopicSpec(topic.get_topic_name(), table.partitions, config))
    return specs


def _keep_faust_off(consumer: Any, topics: Iterable[str]) -> None:
    """Keep Faust's fetcher off the request topics. Its pauses are undone by every
    rebalance and recovery, so this is re-applied after each assignment and commit tick."""
    names = set(topics)
    fetched = {tp for tp in consumer.assignment() if tp.topic in names}
    if fetched - consumer._paused_partitions:
        consumer.pause_partitions(fetched)
