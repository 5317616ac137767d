"""`sluicegate costs`: spend, tokens, requests, cache savings and budget use.

Reads the workers' /costs JSON (the usage tables' current minute/hour/day window, and
the budget ledger for the month and for caps) and prints a table, JSON or CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

COLUMNS = (
    "tenant",
    "feature",
    "window",
    "spend_usd",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "avg_prompt_tokens",
    "cache_hits",
    "saved_usd",
    "budget_used",
)


def merge_rows(documents: list[dict[str, Any]], window: str) -> list[dict[str, Any]]:
    """Rows of several workers (each owns different tenants) with budget use attached."""
    budgets: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for doc in documents:
        budgets.update(doc.get("budgets", {}))
        rows.extend(doc.get("rows", []))
    out = []
    for row in rows:
        requests = int(row["requests"])
        out.append(
            {
                "tenant": row["tenant"],
                "feature": row["feature"],
                "window": window,
                "spend_usd": row["cost_micros"] / 1e6,
                "requests": requests,
                "prompt_tokens": row["prompt_tokens"],
                "completion_tokens": row["completion_tokens"],
                "avg_prompt_tokens": round(row["prompt_tokens"] / requests, 1) if requests else 0,
                "cache_hits": row["cache_hits"],
                "saved_usd": row["saved_micros"] / 1e6,
                "budget_used": _budget_used(budgets.get(row["tenant"]), row["feature"], window),
            }
        )
    return sorted(out, key=lambda r: (r["tenant"], r["feature"] != "*", r["feature"]))


def month_rows(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The month roll-up: the budget ledger's month windows (settled spend)."""
    out = []
    for doc in documents:
        for tenant, view in doc.get("budgets", {}).items():
            for w in view.get("windows", []):
                if w["scope"] == "tenant_month":
                    used = None if w["percent"] is None else f"{w['percent']:.1f}%"
                    out.append(
                        {
                            "tenant": tenant,
                            "feature": "*",
                            "window": w["window"],
                            "spend_usd": w["spent_micros"] / 1e6,
                            "budget_used": used,
                        }
                    )
    return sorted(out, key=lambda r: r["tenant"])


def _budget_used(view: dict[str, Any] | None, feature: str, window: str) -> str | None:
    if not view or window != "day":
        return None
    scope, name = ("tenant_day", "") if feature == "*" else ("feature_day", feature)
    for w in view.get("windows", []):
        if w["scope"] == scope and w.get("feature", "") == name and w["percent"] is not None:
            return f"{w['percent']:.1f}%"
    return None


def cmd_costs(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.table import Table

    from streams.cli import effective_config

    config = effective_config(args.config)
    ports = args.web_port or [config.worker.web_port]
    query = "day" if args.window == "month" else args.window
    documents = [
        httpx.get(
            f"http://{config.worker.web_host}:{port}/costs", params={"window": query}, timeout=10
        ).json()
        for port in ports
    ]
    rows = month_rows(documents) if args.window == "month" else merge_rows(documents, query)
    rows = [
        r
        for r in rows
        if (not args.tenant or r["tenant"] in args.tenant)
        and (not args.feature or r["feature"] in args.feature)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = list(rows[0]) if rows else list(COLUMNS)
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        return 0
    table = Table(title=f"costs, current {args.window}", title_justify="left")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("tenant", "feature", "window") else "right"
        )
    for row in rows:
        table.add_row(
            *[
                f"{v:.6f}"
                if isinstance(v, float) and k.endswith("usd")
                else ("-" if v is None else str(v))
                for k, v in row.items()
            ]
        )
    Console().print(table)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("costs", help="spend, tokens, requests, savings and budget use")
    p.add_argument("--tenant", action="append")
    p.add_argument("--feature", action="append", help="'*' is the tenant's total")
    p.add_argument("--window", choices=["minute", "hour", "day", "month"], default="day")
    p.add_argument("--web-port", type=int, action="append", help="worker port(s)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_costs)
