"""The fault-injecting provider simulator (OpenAI- and Anthropic-shaped) for tests and benches."""

from connectors.simulator.config import FaultConfig, LatencyConfig, ModelProfile, SimulatorConfig
from connectors.simulator.server import SimulatorServer, build_app, run_simulator, serve

__all__ = [
    "FaultConfig",
    "LatencyConfig",
    "ModelProfile",
    "SimulatorConfig",
    "SimulatorServer",
    "build_app",
    "run_simulator",
    "serve",
]
