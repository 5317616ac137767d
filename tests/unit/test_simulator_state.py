"""The simulator's configuration, fault choice, enforced RPM and counters, with a manual clock."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from connectors.simulator.config import FaultConfig, LatencyConfig, ModelProfile, SimulatorConfig
from connectors.simulator.counters import Counters, max_in_window
from connectors.simulator.state import SimulatorState

T0 = 1_700_000_000_000


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


TOML = """
seed = 7
require_key = "sk-test"

[default]
latency_ms = 5

[models."slow"]
latency = { kind = "normal", ms = 200, stddev_ms = 40 }
max_concurrency = 20
rpm = 600

[[faults]]
model = "slow"
kind = "rate_limit"
probability = 0.25
retry_after_s = 2
"""


def test_toml_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(TOML)
    config = SimulatorConfig.from_toml(str(path))
    assert config.seed == 7
    assert config.require_key == "sk-test"
    assert config.profile("anything").latency == LatencyConfig(ms=5)
    slow = config.profile("slow")
    assert (slow.latency.kind, slow.max_concurrency, slow.rpm) == ("normal", 20, 600)
    assert config.faults == (
        FaultConfig(kind="rate_limit", model="slow", probability=0.25, retry_after_s=2),
    )
    assert config.faults[0].status == 429


@pytest.mark.parametrize(
    "data",
    [
        {"unknown": 1},
        {"faults": [{"kind": "explode"}]},
        {"faults": [{"kind": "error", "probability": 1.5}]},
        {"default": {"latency": {"kind": "weibull"}}},
        {"default": {"latency_ms": -1}},
    ],
)
def test_bad_config_is_refused(data: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        SimulatorConfig.from_dict(data)


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("rate_limit", 429),
        ("quota", 429),
        ("error", 500),
        ("overloaded", 529),
        ("unavailable", 503),
    ],
)
def test_fault_kinds_have_default_statuses(kind: str, status: int) -> None:
    assert FaultConfig(kind=kind).status == status


def test_latency_distributions_are_seeded_and_non_negative() -> None:
    normal = LatencyConfig(kind="normal", ms=100, stddev_ms=500)
    draws = [normal.sample_ms(random.Random(1)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    assert min(normal.sample_ms(random.Random(i)) for i in range(200)) >= 0
    tail = LatencyConfig(ms=10, tail_probability=0.1, tail_ms=5000)
    rng = random.Random(3)
    samples = [tail.sample_ms(rng) for _ in range(2000)]
    assert 100 < samples.count(5000) < 300
    assert set(samples) == {10, 5000}


def test_fault_with_duration_is_active_only_in_its_window() -> None:
    clock = Clock()
    state = SimulatorState(SimulatorConfig(), clock)
    state.set_faults([FaultConfig(kind="outage", model="m", duration_s=10)])
    assert state.pick_fault("m", T0 + 9_999) is not None
    assert state.pick_fault("m", T0 + 10_000) is None
    assert state.pick_fault("other", T0) is None


def test_absolute_window_starts_later() -> None:
    state = SimulatorState(SimulatorConfig(), Clock())
    start = T0 / 1000 + 5
    state.set_faults([FaultConfig(kind="error", start_at=start, end_at=start + 1)])
    assert state.pick_fault("m", T0) is None
    assert state.pick_fault("m", T0 + 5_500) is not None


def test_probabilistic_faults_are_reproducible_with_a_seed() -> None:
    def run() -> list[bool]:
        fault = FaultConfig(kind="error", model="m", probability=0.3)
        state = SimulatorState(SimulatorConfig(seed=42, faults=(fault,)), Clock())
        return [state.pick_fault("m", T0) is not None for _ in range(1000)]

    first = run()
    assert first == run()
    assert 240 < sum(first) < 360


def test_model_fault_is_checked_before_wildcard_fault() -> None:
    faults = (FaultConfig(kind="overloaded", model="*"), FaultConfig(kind="error", model="m"))
    state = SimulatorState(SimulatorConfig(faults=faults), Clock())
    chosen = state.pick_fault("m", T0)
    assert chosen is not None and chosen.kind == "error"
    other = state.pick_fault("x", T0)
    assert other is not None and other.kind == "overloaded"


def test_installing_faults_replaces_only_the_named_models() -> None:
    faults = (FaultConfig(kind="error", model="a"), FaultConfig(kind="error", model="b"))
    state = SimulatorState(SimulatorConfig(faults=faults), Clock())
    state.set_faults([FaultConfig(kind="hang", model="a")])
    assert [f["kind"] for f in state.faults_json()] == ["hang", "error"]
    state.clear_faults("a")
    assert [f["model"] for f in state.faults_json()] == ["b"]
    state.clear_faults()
    assert state.faults_json() == []


def test_rpm_admits_up_to_the_limit_within_a_minute() -> None:
    config = SimulatorConfig(models={"m": ModelProfile(rpm=3)})
    state = SimulatorState(config, Clock())
    results = [state.admit_rpm("m", T0 + i * 1000)[0] for i in range(4)]
    assert results == [True, True, True, False]
    admitted, limits = state.admit_rpm("m", T0 + 30_000)
    assert not admitted and limits is not None
    assert (limits.remaining_requests, limits.reset_requests_ms) == (0, 30_000)
    assert state.admit_rpm("m", T0 + 60_000)[0]  # the first one left the window


def test_no_rpm_means_no_limit_and_no_headers() -> None:
    state = SimulatorState(SimulatorConfig(), Clock())
    assert state.admit_rpm("m", T0) == (True, None)


def test_capacity_semaphore_follows_profile_changes() -> None:
    state = SimulatorState(SimulatorConfig(default=ModelProfile(max_concurrency=2)), Clock())
    assert state.semaphore("m") is state.semaphore("m")
    state.set_profile("m", ModelProfile())
    assert state.semaphore("m") is None


@pytest.mark.parametrize(
    ("per_second", "window", "expected"),
    [
        ({}, 60, 0),
        ({100: 5}, 60, 5),
        ({100: 5, 159: 5}, 60, 10),
        ({100: 5, 160: 5}, 60, 5),
        ({100: 1, 130: 7, 170: 2, 171: 4}, 60, 13),
    ],
)
def test_max_in_window(per_second: dict[int, int], window: int, expected: int) -> None:
    assert max_in_window(per_second, window) == expected


def test_counters_count_models_statuses_seconds_and_concurrency() -> None:
    counters = Counters()
    counters.received("a", T0, "r1")
    counters.received("a", T0 + 10, "r2")
    counters.received("b", T0 + 1_000, "r1")
    counters.finished("a", 200)
    counters.finished("a", 429)
    snap = counters.snapshot()
    assert snap["received"] == 3
    assert snap["max_in_flight"] == 3
    assert snap["in_flight"] == 1
    assert snap["by_status"] == {"200": 1, "429": 1}
    assert snap["models"]["a"]["per_second"] == {str(T0 // 1000): 2}
    assert snap["max_per_60s"] == 3
    assert (counters.seen("r1"), counters.seen("r2"), counters.seen("r3")) == (2, 1, 0)


def test_request_ids_are_bounded() -> None:
    counters = Counters(recent_ids=2)
    for rid in ("a", "b", "c"):
        counters.received("m", T0, rid)
    assert (counters.seen("a"), counters.seen("c")) == (0, 1)
    assert counters.recent_ids(10) == ["b", "c"]


def test_per_second_history_is_bounded() -> None:
    counters = Counters(history_s=3)
    for s in range(5):
        counters.received("m", T0 + s * 1000, None)
    assert len(counters.snapshot()["per_second"]) == 3


def test_reset_keeps_requests_in_flight() -> None:
    counters = Counters()
    counters.received("m", T0, "r")
    counters.reset()
    counters.finished("m", 200)
    snap = counters.snapshot()
    assert (snap["received"], snap["in_flight"], snap["by_status"]) == (0, 0, {"200": 1})
    assert counters.seen("r") == 0
