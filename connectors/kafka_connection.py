"""How every process connects to Kafka: one plain object for all three client stacks.

The worker (Faust and aiokafka), the ingress (aiokafka), the Python client (aiokafka) and
the operator commands (confluent-kafka) all build their clients from a ``KafkaConnection``,
so a cluster's address and security settings are written once. It depends on nothing in
``streams``: the ingress and the client take it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KafkaConnection:
    """Where the cluster is and how to reach it (security settings join here)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "sluicegate"
    # The largest record any producer sends (Kafka's broker default is about 1 MiB).
    max_record_bytes: int = 1_048_576

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by AIOKafkaProducer, AIOKafkaConsumer and the admin."""
        return {"bootstrap_servers": self.bootstrap_servers, "client_id": self.client_id}

    def confluent_config(self) -> dict[str, Any]:
        """The librdkafka settings shared by confluent-kafka producers, consumers, admins."""
        return {"bootstrap.servers": self.bootstrap_servers, "client.id": self.client_id}
