"""``sluicegate ingress``: run the OpenAI-compatible HTTP ingress.

    sluicegate --config sluicegate.toml ingress --port 8080 [--host 0.0.0.0] [--instance-id ID]

Heavy imports stay inside the command so that ``sluicegate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any


def add_commands(sub: Any) -> None:
    p = sub.add_parser("ingress", help="run the OpenAI-compatible HTTP ingress")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--instance-id",
        help="names this ingress's reply topic <prefix>.replies.ingress-<id> "
        "(default <hostname>-<port>)",
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_ingress)


def cmd_ingress(args: argparse.Namespace) -> int:
    from connectors.ingress.app import IngressSettings, run_ingress
    from connectors.ingress.auth import KeyTable
    from streams.cli import effective_config
    from streams.config import ConfigError

    logging.basicConfig(
        level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = effective_config(args.config)
    try:  # a malformed api_key_sha256 is a configuration error, reported before serving
        KeyTable.from_tenants({n: t.api_key_sha256 for n, t in config.tenants.items()})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = IngressSettings(
        host=args.host,
        port=args.port,
        instance_id=args.instance_id,
        max_body_bytes=args.max_body_bytes,
    )
    run_ingress(config, settings)
    return 0
