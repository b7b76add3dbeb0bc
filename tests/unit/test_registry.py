"""What each worker serves: the GPU queue's activity slots are the room the box reports, and
only the GPU worker serves the single-request workflow (no live recorded history needs the
CPU worker to: tests/unit/test_replay.py)."""

from __future__ import annotations

import asyncio

import pytest

from kernel.config import Settings
from workers import registry as registry_module
from workers.health import ShardSlots
from workers.registry import GPU_CONCURRENT_SHARDS, build_registry
from workers.workflows.batch import BatchWorkflow
from workers.workflows.process import ProcessWorkflow


def _settings() -> Settings:
    return Settings(_env_file=None)


def test_a_gpu_box_holds_as_many_shards_as_the_room_it_reports() -> None:
    registry = build_registry("gpu", _settings())
    try:
        assert registry.box_reporter is not None and registry.tuner is not None
        slots = registry.tuner._get_activity_task_slot_supplier()
        assert isinstance(slots, ShardSlots)
        assert slots.size == registry.box_reporter.shard_room == GPU_CONCURRENT_SHARDS == 4
        assert [a.__name__ for a in registry.activities] == ["run_shard"]
        assert list(registry.workflows) == []
        assert list(registry.urgent_workflows) == [ProcessWorkflow]
        assert [a.__name__ for a in registry.urgent_activities] == ["process_request"]
    finally:
        asyncio.run(registry.close())


def test_the_cpu_worker_serves_batches_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "ensure_bucket", lambda *args: None)
    registry = build_registry("cpu", _settings())
    try:
        assert list(registry.workflows) == [BatchWorkflow]
        assert not registry.urgent_workflows
    finally:
        asyncio.run(registry.close())
