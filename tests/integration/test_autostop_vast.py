"""Autostop against the real Temporal dev server and the local Vast.ai stand-in: the box
stays while a batch workflow runs, releases itself (destroy, with its own scoped key) a full
idle limit after the batch ended, and another instance's key is refused."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from harness.batch_doubles import dev_server_env
from harness.fake_vast import FakeVast, NoBox, offer
from kernel.config import Settings
from kernel.inputs import BATCH_WORKFLOW
from workers import autostop

pytestmark = pytest.mark.integration

env = pytest.fixture(scope="module", name="env")(dev_server_env)


@pytest.fixture
def fake() -> Iterator[FakeVast]:
    server = FakeVast([offer(1), offer(2)], lambda instance_id, env: NoBox()).start()
    try:
        yield server
    finally:
        server.close()


def rent(fake: FakeVast, offer_id: int) -> int:
    answer = httpx.put(
        f"{fake.url}/api/v0/asks/{offer_id}/",
        json={"image": "img", "env": {}},
        headers={"Authorization": f"Bearer {fake.api_key}"},
    ).json()
    return int(answer["new_contract"])


async def test_idle_release_waits_for_the_batch_then_destroys_the_box(
    env: WorkflowEnvironment,
    fake: FakeVast,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instance_id = rent(fake, 1)
    other = rent(fake, 2)
    box_env = fake.instances[instance_id].env
    for name in ("CONTAINER_ID", "CONTAINER_API_KEY", "VAST_URL"):
        monkeypatch.setenv(name, box_env[name])
    queue = f"autostop-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
        CPU_TASK_QUEUE=f"{queue}-cpu",
        GPU_TASK_QUEUE=f"{queue}-gpu",
        BOX_NAME="box-idle",
        IDLE_RELEASE_MINUTES=0.05,  # 3 s
    )
    # A batch in progress: a batch workflow that runs (no worker takes it here).
    handle = await env.client.start_workflow(
        BATCH_WORKFLOW, id=f"batch-{queue}", task_queue=settings.CPU_TASK_QUEUE
    )

    async def look(config: Settings) -> autostop.Work:
        return await autostop.look_for_work(config, (("Temporal", autostop.temporal_work),))

    caplog.set_level("INFO", logger="autostop")
    watcher = asyncio.create_task(autostop.watch(settings, look))
    await asyncio.sleep(6)  # twice the idle limit
    assert not watcher.done(), "released while a batch it could serve was running"
    assert instance_id in fake.running()

    await handle.terminate("test: the batch is over")
    ended = time.monotonic()
    assert await asyncio.wait_for(watcher, 30) == f"destroyed instance {instance_id}"
    waited = time.monotonic() - ended
    assert 3 - 0.5 <= waited <= 3 + 5, waited  # the idle limit, plus visibility's lag
    assert instance_id not in fake.running()
    assert fake.instances[instance_id].destroyed is not None
    assert other in fake.running()
    assert "no batch running, no GPU-queue backlog and no request on box box-idle" in caplog.text

    # A box's key releases that box only.
    monkeypatch.setenv("CONTAINER_ID", str(other))
    with pytest.raises(RuntimeError, match="HTTP 401"):
        await autostop.release_instance(settings, "stop")
    assert other in fake.running()
