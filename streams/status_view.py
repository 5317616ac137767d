"""`sluicegate status`: the worker's JSON status as terminal tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _table(title: str, rows: dict[str, Any], key: str = "name", value: str = "value") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(key)
    table.add_column(value, justify="right")
    for name, val in sorted(rows.items()):
        table.add_row(str(name), str(val))
    return table


def print_status(status: dict[str, Any]) -> None:
    console = Console()
    scalars = {k: v for k, v in status.items() if not isinstance(v, dict | list)}
    console.print(_table("worker", scalars))
    for name, value in status.items():
        if isinstance(value, dict) and value:
            flat = {
                f"{k}.{kk}" if isinstance(v, dict) else k: vv if isinstance(v, dict) else v
                for k, v in value.items()
                for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])
            }
            console.print(_table(name, flat))
