"""Sluicegate's topics: their names, partition counts, retention, and idempotent creation.

Topics are created explicitly (the broker runs with auto-creation off): all request
topics and the usage topic share one partition count, so a tenant's requests and usage
land on the same partition number and one worker owns all of a tenant's state.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from streams.config import PRIORITIES, SluicegateConfig

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(config: SluicegateConfig) -> list[TopicSpec]:
    k = config.kafka
    audit = {"retention.ms": str(int(k.retention_days * DAY_MS)), "cleanup.policy": "delete"}
    dead = {
        "retention.ms": str(int(k.deadletter_retention_days * DAY_MS)),
        "cleanup.policy": "delete",
    }
    specs = [TopicSpec(config.request_topic(p), k.partitions, audit) for p in PRIORITIES]
    specs += [
        TopicSpec(config.topic("responses"), k.partitions, audit),
        TopicSpec(config.topic("usage"), k.partitions, audit),
        TopicSpec(config.topic("deadletter.shed"), k.partitions, dead),
        TopicSpec(config.topic("deadletter.failed"), k.partitions, dead),
        # Cache purges, keyed by tenant so they run where the tenant's cache lives.
        TopicSpec(config.topic("cache.commands"), k.partitions, {"retention.ms": str(DAY_MS)}),
        # Small compacted ledger of which dead letters were re-driven (never twice).
        TopicSpec(config.topic("deadletter.redriven"), 1, {"cleanup.policy": "compact"}),
    ]
    return specs


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000})


def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], replication_factor: int = 1, timeout_s: float = 30
) -> dict[str, str]:
    """Create what is missing; report each topic as 'created' or 'exists'.

    An existing topic with a different partition count is an error: co-partitioning
    would silently break.
    """
    admin = admin_client(bootstrap)
    existing = admin.list_topics(timeout=timeout_s).topics
    result: dict[str, str] = {}
    wanted = []
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                raise RuntimeError(
                    f"topic {spec.name} has {have} partitions, config says {spec.partitions}"
                )
            result[spec.name] = "exists"
        else:
            wanted.append(
                NewTopic(spec.name, spec.partitions, replication_factor, config=spec.config)
            )
    if wanted:
        for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
            try:
                future.result()
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                result[name] = "exists"
    return result


def ensure_sluicegate_topics(config: SluicegateConfig) -> dict[str, str]:
    return ensure_topics(
        config.kafka.bootstrap_servers, topic_specs(config), config.kafka.replication_factor
    )


def topic_retention_ms(bootstrap: str, topic: str) -> int | None:
    admin = admin_client(bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    value = configs.get("retention.ms")
    return int(value.value) if value is not None and value.value is not None else None


def cluster_id(bootstrap: str, timeout_s: float = 30) -> str | None:
    """The Kafka cluster's id (a broker formatted anew gets a new one)."""
    found: str | None = admin_client(bootstrap).list_topics(timeout=timeout_s).cluster_id
    return found
