"""The worker drops RocksDB state written against another Kafka cluster (streams/cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import cli, topics


def _run(monkeypatch: pytest.MonkeyPatch, data_dir: Path, cluster: str) -> None:
    monkeypatch.setattr(topics, "cluster_id", lambda bootstrap: cluster)
    cli._forget_state_of_another_cluster(data_dir, "127.0.0.1:1")


def test_state_of_the_same_cluster_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "worker"
    _run(monkeypatch, data, "cluster-a")
    (data / "table.db").write_text("rows")
    _run(monkeypatch, data, "cluster-a")
    assert (data / "table.db").read_text() == "rows"


def test_state_of_another_cluster_is_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "worker"
    _run(monkeypatch, data, "cluster-a")
    (data / "table.db").write_text("rows")
    _run(monkeypatch, data, "cluster-b")
    assert not (data / "table.db").exists()
    assert (data / "kafka-cluster-id").read_text() == "cluster-b"
