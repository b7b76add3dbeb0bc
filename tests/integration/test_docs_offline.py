"""`/docs` in a real headless Chromium that cannot reach the internet.

The API runs alone (`python -m app`, with an API key and its dependencies pointed at closed
ports); every browser request that leaves 127.0.0.1 is refused and recorded, so the page
shows its operations only when Swagger UI's assets come from the API itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.integration.test_dashboard import Launcher, browser_context

pytestmark = pytest.mark.integration
__all__ = ["browser_context"]  # the fixture, shared with the dashboard tests

OPERATIONS = [
    ("post", "/v1/files"),
    ("get", "/v1/files/{file_id}/content"),
    ("post", "/v1/batches"),
    ("post", "/v1/batches/{batch_id}/cancel"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/models"),
    ("post", "/batch"),
    ("post", "/process"),
]


@pytest.fixture
def api_url(tmp_path: Path) -> Iterator[str]:
    launcher = Launcher(tmp_path)
    try:
        env = launcher.environment(API_KEY="docs-test-key-0123456")
        launcher.api(env)
        yield f"http://127.0.0.1:{env['API_PORT']}"
    finally:
        launcher.stop_all()


def test_docs_list_the_operations_with_no_internet(browser_context: Any, api_url: str) -> None:
    context = browser_context()
    refused: list[str] = []

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.goto(f"{api_url}/docs")  # no Authorization header: the docs hold no data
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("LLM Batch API")
    for method, path in OPERATIONS:
        operation = page.locator(f".opblock-{method} [data-path='{path}']")
        expect(operation.first).to_be_visible()
    assert refused == [], f"the page tried to reach the internet: {refused}"
