"""The ``sluicegate`` command line.

sluicegate worker            run a worker (creates topics first)
sluicegate simulator         run the fault-injecting provider simulator
sluicegate topics create     create the topics (idempotent)
sluicegate submit ...        send one request and print the response
sluicegate status            the worker's queues, in-flight calls and counts
sluicegate dev               what `make run` runs: simulator + worker + demo traffic
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from schemas.errors import SluicegateError
from streams.config import ConfigError, SluicegateConfig, load_config

DEFAULT_CONFIG = "sluicegate.toml"


def effective_config(path: str | None, namespace: str | None = None) -> SluicegateConfig:
    """The TOML file with environment overrides (and a replay namespace) applied."""
    config = load_config(path or os.environ.get("SLUICEGATE_CONFIG", DEFAULT_CONFIG))
    kafka: dict[str, Any] = {}
    worker: dict[str, Any] = {}
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        kafka["bootstrap_servers"] = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    prefix = os.environ.get("SLUICEGATE_TOPIC_PREFIX")
    if namespace:
        prefix = namespace
        worker["app_id"] = f"{config.worker.app_id}-{namespace}"
        worker["data_dir"] = f"{config.worker.data_dir}-{namespace}"
    if prefix:
        kafka["topic_prefix"] = prefix
    return config.model_copy(
        update={
            "kafka": config.kafka.model_copy(update=kafka),
            "worker": config.worker.model_copy(update=worker),
        }
    )


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from streams.app import build_app, changelog_specs
    from streams.topics import ensure_sluicegate_topics, ensure_topics

    config = effective_config(args.config, args.namespace)
    updates: dict[str, Any] = {}
    if args.data_dir:
        updates["data_dir"] = args.data_dir
    if args.web_port is not None:
        updates["web_port"] = args.web_port
    if updates:
        config = config.model_copy(update={"worker": config.worker.model_copy(update=updates)})
    ensure_sluicegate_topics(config)
    _forget_state_of_another_cluster(Path(config.worker.data_dir), config.kafka.bootstrap_servers)
    app, _gateway = build_app(config)
    k = config.kafka
    ensure_topics(k.bootstrap_servers, changelog_specs(app), k.replication_factor)

    class _Worker(faust.Worker):
        """Faust's worker, without its terminal spinner: the spinner's log handler lowers the
        root logger to DEBUG, so every debug call in faust and aiokafka formats a record (a few
        percent of the worker's CPU). The root logger keeps the level asked for."""

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            self.spinner = None
            super().on_setup_root_logger(logger, level)
            logger.setLevel(level or logging.WARNING)

    worker = _Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0


def _forget_state_of_another_cluster(data_dir: Path, bootstrap: str) -> None:
    """The worker's RocksDB files are a local copy of its tables' changelogs in one Kafka
    cluster. Against another cluster (say, a broker formatted anew) they are stale, and
    Faust refuses to start ("persisted offset ... higher than the highwater"): drop them,
    so the tables are restored from this cluster's changelogs."""
    from streams.topics import cluster_id

    current = cluster_id(bootstrap)
    marker = data_dir / "kafka-cluster-id"
    if current is None:
        return
    if marker.exists() and marker.read_text().strip() != current:
        print(
            f"sluicegate worker: {data_dir} holds table state of another Kafka cluster; "
            "removing it (the tables are restored from this cluster's changelogs)",
            file=sys.stderr,
        )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(current)


def cmd_simulator(args: argparse.Namespace) -> int:
    from connectors.simulator import run_simulator

    run_simulator(args.host, args.port, args.sim_config)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.topics import ensure_sluicegate_topics

    config = effective_config(args.config)
    for name, state in sorted(ensure_sluicegate_topics(config).items()):
        print(f"{state:8} {name}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from connectors.client import SluicegateClient

    config = effective_config(args.config)

    async def run() -> dict[str, Any]:
        async with SluicegateClient(
            config.kafka.bootstrap_servers, topic_prefix=config.kafka.topic_prefix
        ) as client:
            params: dict[str, Any] = {}
            if args.max_tokens is not None:
                params["max_tokens"] = args.max_tokens
            if args.temperature is not None:
                params["temperature"] = args.temperature
            response = await client.complete(
                tenant=args.tenant,
                feature=args.feature,
                priority=args.priority,
                model=args.model,
                messages=[{"role": "user", "content": args.prompt}],
                timeout=args.timeout,
                cache_mode=args.cache,
                **params,
            )
            return response.record

    record = asyncio.run(run())
    print(json.dumps(record, indent=2, default=str))
    return 0 if record["status"] in ("ok", "cached", "degraded") else 1


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

    config = effective_config(args.config)
    port = args.web_port or config.worker.web_port
    status = httpx.get(f"http://{config.worker.web_host}:{port}/status", timeout=5).json()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        from streams.status_view import print_status

        print_status(status)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from streams.dev import run_dev

    return run_dev(effective_config(args.config), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluicegate", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", help=f"TOML file (default ${'{'}SLUICEGATE_CONFIG{'}'} or {DEFAULT_CONFIG})"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run a worker")
    p.add_argument("--web-port", type=int, help="JSON status / metrics port")
    p.add_argument("--data-dir", help="where RocksDB tables live")
    p.add_argument("--namespace", help="topic prefix for an isolated (replay) run")
    p.add_argument("--loglevel", default="warning")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("simulator", help="run the fault-injecting provider simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--faults", dest="sim_config", help="simulator TOML (latency, faults)")
    p.set_defaults(func=cmd_simulator)

    p = sub.add_parser("topics", help="manage topics")
    p.add_argument("action", choices=["create"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("submit", help="send one request and print the response")
    p.add_argument("--tenant", required=True)
    p.add_argument("--feature", default="default")
    p.add_argument("--priority", default="normal", choices=["critical", "high", "normal", "low"])
    p.add_argument("--model", default="chat")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument(
        "--cache", default="default", choices=["default", "bypass", "refresh", "only_if_cached"]
    )
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("prompt")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a worker's status")
    p.add_argument("--web-port", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dev", help="simulator + worker + demo traffic with a live status line")
    p.add_argument("--sim-port", type=int, default=8900)
    p.add_argument("--ingress-port", type=int, default=8080)
    p.add_argument("--rate", type=float, default=5.0, help="demo requests per second")
    p.add_argument("--no-traffic", action="store_true")
    p.set_defaults(func=cmd_dev)
    _add_plugin_commands(sub)
    return parser


# Modules that add their own subcommands: each has ``add_commands(subparsers)`` and keeps
# its heavy imports inside the command functions, so `sluicegate --help` stays fast.
COMMAND_MODULES = (
    "streams.dlq",
    "streams.costs",
    "streams.cache_admin",
    "streams.replay.cli",
    "connectors.ingress.cli",
)


def _add_plugin_commands(sub: Any) -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # not written yet
            raise
        module.add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, SluicegateError) as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
