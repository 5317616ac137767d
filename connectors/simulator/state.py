"""The simulator's mutable state: profiles, installed faults, RPM windows, capacity, randomness.

Decisions per request, in order: a fault (the model's own, then those for "*", first one whose
window is open and whose coin toss with ``probability`` comes up), the enforced RPM (a 60 s
sliding window of admitted requests: O(1) amortised), then the capacity semaphore and the
latency draw. Each model has its own ``random.Random(f"{seed}:{model}")`` so a run with the same
seed and the same per-model request order makes the same choices.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from connectors.simulator.config import FaultConfig, ModelProfile, SimulatorConfig
from connectors.simulator.counters import Counters
from connectors.simulator.wire import Limits

RPM_WINDOW_MS = 60_000


class SimulatorState:
    def __init__(self, config: SimulatorConfig, now_ms: Callable[[], int]) -> None:
        self.config = config
        self.now_ms = now_ms
        self.seed = config.seed
        self.default = config.default
        self.profiles: dict[str, ModelProfile] = dict(config.models)
        self.faults: dict[str, list[FaultConfig]] = {}
        self.counters = Counters(config.recent_ids, config.history_s)
        self._rngs: dict[str, random.Random] = {}
        self._windows: dict[str, deque[int]] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._next_id = 0
        self.set_faults(config.faults)

    # -- profiles ---------------------------------------------------------------------------

    def profile(self, model: str) -> ModelProfile:
        return self.profiles.get(model, self.default)

    def set_profile(self, model: str, profile: ModelProfile) -> None:
        """Change a model's profile ("*" for the default); capacity applies to new arrivals."""
        if model == "*":
            self.default = profile
            self._semaphores.clear()
        else:
            self.profiles[model] = profile
            self._semaphores.pop(model, None)

    def semaphore(self, model: str) -> asyncio.Semaphore | None:
        limit = self.profile(model).max_concurrency
        if limit <= 0:
            return None
        sem = self._semaphores.get(model)
        if sem is None:
            sem = self._semaphores[model] = asyncio.Semaphore(limit)
        return sem

    def rng(self, model: str) -> random.Random:
        rng = self._rngs.get(model)
        if rng is None:
            rng = self._rngs[model] = random.Random(f"{self.seed}:{model}")
        return rng

    def next_id(self) -> str:
        self._next_id += 1
        return f"sim{self._next_id:010d}"

    # -- faults -----------------------------------------------------------------------------

    def set_faults(self, faults: Iterable[FaultConfig]) -> None:
        """Install ``faults``, replacing the fault list of each model they name."""
        now = self.now_ms()
        grouped: dict[str, list[FaultConfig]] = {}
        for fault in faults:
            grouped.setdefault(fault.model, []).append(fault.installed(now))
        self.faults.update(grouped)

    def clear_faults(self, model: str | None = None) -> None:
        if model is None:
            self.faults.clear()
        else:
            self.faults.pop(model, None)

    def pick_fault(self, model: str, now_ms: int) -> FaultConfig | None:
        if not self.faults:
            return None
        candidates: tuple[FaultConfig, ...] = (
            *self.faults.get(model, ()),
            *self.faults.get("*", ()),
        )
        for fault in candidates:
            if not fault.active(now_ms):
                continue
            if fault.probability >= 1.0 or self.rng(model).random() < fault.probability:
                return fault
        return None

    def faults_json(self) -> list[dict[str, Any]]:
        now = self.now_ms()
        return [{**f.to_dict(), "active": f.active(now)} for fs in self.faults.values() for f in fs]

    # -- enforced RPM -----------------------------------------------------------------------

    def admit_rpm(self, model: str, now_ms: int) -> tuple[bool, Limits | None]:
        """Admit one request under the model's RPM; (admitted, limits to advertise)."""
        rpm = self.profile(model).rpm
        if rpm <= 0:
            return True, None
        window = self._windows.get(model)
        if window is None:
            window = self._windows[model] = deque()
        while window and window[0] <= now_ms - RPM_WINDOW_MS:
            window.popleft()
        admitted = len(window) < rpm
        if admitted:
            window.append(now_ms)
        reset_ms = window[0] + RPM_WINDOW_MS - now_ms
        return admitted, Limits(rpm, rpm - len(window), reset_ms)

    def reseed(self, seed: int) -> None:
        """Restart every model's random stream from ``seed``."""
        self.seed = seed
        self._rngs.clear()

    def reset(self) -> None:
        """Zero counters and RPM windows and reseed the random streams."""
        self.counters.reset()
        self._windows.clear()
        self._rngs.clear()
