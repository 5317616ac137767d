"""``python -m connectors.simulator --port 8900 [--host H] [--config sim.toml]``."""

from __future__ import annotations

import argparse

from connectors.simulator.server import run_simulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sluicegate simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--config", default=None, help="a simulator TOML file")
    args = parser.parse_args(argv)
    run_simulator(args.host, args.port, args.config)


if __name__ == "__main__":
    main()
