"""`sluicegate cache stats|purge`: look at and purge the response cache.

Stats come from the workers' /cache JSON. A purge is a command record on
``<prefix>.cache.commands`` keyed by tenant: the worker owning the tenant's partition
applies it from a stream, the only place a RocksDB-backed table may be written.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """'90s', '15m', '2h', '7d' -> milliseconds."""
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 2h or 7d")
    return int(float(match.group(1)) * UNIT_MS[match.group(2)])


def purge_command(tenant: str, now_ms: int, older_than_ms: int | None) -> dict[str, Any]:
    before = now_ms - (older_than_ms or 0)
    return {"action": "purge", "tenant": tenant, "before_ms": before}


def cmd_stats(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.table import Table

    from streams.cli import effective_config

    config = effective_config(args.config)
    ports = args.web_port or [config.worker.web_port]
    merged: dict[str, dict[str, float]] = {}
    for port in ports:
        stats = httpx.get(f"http://{config.worker.web_host}:{port}/cache", timeout=5).json()
        for tenant, counts in stats.items():
            into = merged.setdefault(tenant, {})
            for name, value in counts.items():
                if name != "hit_rate":
                    into[name] = into.get(name, 0) + value
    if args.json:
        print(json.dumps(merged, indent=2))
        return 0
    table = Table(title="response cache", title_justify="left")
    for column in ("tenant", "hits", "misses", "hit rate", "stored", "bytes", "saved $"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for tenant, c in sorted(merged.items()):
        reads = c.get("hits", 0) + c.get("misses", 0)
        table.add_row(
            tenant,
            str(int(c.get("hits", 0))),
            str(int(c.get("misses", 0))),
            f"{c.get('hits', 0) / reads:.1%}" if reads else "-",
            str(int(c.get("stored", 0))),
            str(int(c.get("stored_bytes", 0))),
            f"{c.get('saved_micros', 0) / 1e6:.6f}",
        )
    Console().print(table)
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from streams.cli import effective_config

    config = effective_config(args.config)
    command = purge_command(args.tenant, int(time.time() * 1000), args.older_than)
    producer = Producer(
        {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "partitioner": "murmur2_random",
            "acks": "all",
        }
    )
    producer.produce(
        config.topic("cache.commands"), json.dumps(command).encode(), key=args.tenant.encode()
    )
    if producer.flush(30) != 0:
        print("sluicegate: the purge command was not delivered")
        return 1
    print(f"purge sent: {args.tenant}'s entries created before {command['before_ms']} ms")
    return 0


def add_commands(sub: Any) -> None:
    cache = sub.add_parser("cache", help="response cache statistics and purges")
    actions = cache.add_subparsers(dest="cache_action", required=True)
    stats = actions.add_parser("stats", help="entries, hit rate, bytes, savings per tenant")
    stats.add_argument("--web-port", type=int, action="append", help="worker port(s)")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)
    purge = actions.add_parser("purge", help="drop a tenant's cached answers")
    purge.add_argument("--tenant", required=True)
    purge.add_argument("--older-than", type=parse_duration_ms, help="e.g. 2h: keep newer ones")
    purge.set_defaults(func=cmd_purge)
