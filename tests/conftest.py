from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.stack import Stack, start_stack

# Workers exit after this many idle seconds in the shared stack, so the idle-exit
# behaviour is exercised without slowing the other tests much.
TEST_WORKER_IDLE_SECONDS = "8"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole stack in local mode, booted by scripts/start_services.sh."""
    running = start_stack(
        Path(tmp_path_factory.mktemp("stack")),
        WORKER_IDLE_EXIT_SECONDS=TEST_WORKER_IDLE_SECONDS,
        LLAMA_CTX_PER_SLOT="512",
        MAX_REQUEST_BYTES="2000000",
    )
    try:
        yield running
    finally:
        running.stop()
