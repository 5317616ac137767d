"""Fuzzing streams/config.parse_config: any data gives a config or a ConfigError, nothing else.

A worker, the ingress and every CLI command start by parsing sluicegate.toml; the promise
(DESIGN §6) is "validated at start with clear errors", so a bad file must come back as a
ConfigError naming the key, never as a traceback from deeper down. Inputs: random nested
dicts, and the shipped sluicegate.toml with random edits at real keys (so validation
runs deep: routes, tenants, budgets, time zones).
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.config import ConfigError, SluicegateConfig, parse_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED: dict[str, Any] = tomllib.loads((ROOT / "sluicegate.toml").read_text())
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Words the schema uses, so random keys and strings sometimes mean something.
WORDS = st.sampled_from(
    [
        "kafka", "worker", "providers", "routes", "tenants", "budgets", "resilience",
        "breaker", "retry", "models", "primary", "fallbacks", "sim", "sim/sim-large",
        "sim/sim-small", "sim-large", "features", "timezone", "UTC", "America",
        "Europe/Paris", "downgrade", "reject", "count", "time", "openai", "anthropic",
        "critical", "low", "*", "", "rpm", "partitions", "nope/nope",
    ]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    WORDS,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(WORDS, st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)


def _parse(data: Any) -> SluicegateConfig | None:
    """The property: parse_config returns a config or raises ConfigError, nothing else."""
    try:
        return parse_config(data)
    except ConfigError as exc:
        assert str(exc), "a ConfigError must say what is wrong"
        return None


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a dict/list tree (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        out.append((*prefix, key))
        if isinstance(value, dict | list):
            out.extend(_paths(value, (*prefix, key)))
    return out


SHIPPED_PATHS = _paths(SHIPPED)


@st.composite
def edited_config(draw: st.DrawFn) -> dict[str, Any]:
    """The shipped config with 1-4 random edits: replace, delete, or add a key."""
    data = copy.deepcopy(SHIPPED)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(SHIPPED_PATHS))
        parent: Any = data
        for key in path[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        last = path[-1]
        if isinstance(parent, list):
            if not (isinstance(last, int) and 0 <= last < len(parent)):
                continue
        elif not (isinstance(parent, dict) and last in parent):
            continue
        edit = draw(st.sampled_from(("replace", "delete", "add")))
        if edit == "replace":
            parent[last] = draw(VALUES)
        elif edit == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.one_of(WORDS, st.text(max_size=8)))] = draw(VALUES)
    return data


@FUZZ
@given(data=st.dictionaries(st.one_of(WORDS, st.text(max_size=8)), VALUES, max_size=6))
def test_random_nested_dicts_raise_only_config_error(data: dict[str, Any]) -> None:
    _parse(data)


@FUZZ
@given(data=VALUES)
def test_values_that_are_not_even_tables_raise_only_config_error(data: Any) -> None:
    _parse(data)


@FUZZ
@given(data=edited_config())
def test_random_edits_of_the_shipped_config_raise_only_config_error(data: dict[str, Any]) -> None:
    _parse(data)


@FUZZ
@given(section=st.sampled_from(["kafka", "worker", "budgets", "resilience", "cache"]), data=VALUES)
def test_random_sections_raise_only_config_error(section: str, data: Any) -> None:
    _parse({**copy.deepcopy(SHIPPED), section: data})


@pytest.mark.parametrize(
    "zone",
    ["America", "__pycache__", "x" * 300, "../../etc/passwd", "", "Not/A_Zone"],
)
def test_a_time_zone_that_is_a_directory_or_too_long_is_a_config_error(zone: str) -> None:
    data = {**copy.deepcopy(SHIPPED), "budgets": {"timezone": zone}}
    with pytest.raises(ConfigError, match=r"budgets\.timezone"):
        parse_config(data)


def test_the_shipped_config_parses() -> None:
    """The edits start from a valid config."""
    assert _parse(copy.deepcopy(SHIPPED)) is not None


@pytest.mark.parametrize("usd", [float("inf"), 1e30])
def test_money_values_that_parse_can_be_used(usd: float) -> None:
    data = copy.deepcopy(SHIPPED)
    data["tenants"]["acme"]["daily_budget_usd"] = usd
    config = _parse(data)
    if config is not None:
        config.admission_config()
