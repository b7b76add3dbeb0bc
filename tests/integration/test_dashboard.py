"""The dashboard (`python -m app.web`) in a real headless Chromium against a real API.

Every test starts real processes on free 127.0.0.1 ports: the API (`python -m app`) with
Temporal, S3 and llama-server pointed at closed ports, so its /health is really degraded,
and the dashboard in front of it. Each process is stopped by its PID in teardown.

The browser is Debian's chromium driven by the `playwright` package (no browser download).
Where /usr/bin/chromium is missing the browser tests are skipped, except under CI, where
they fail: CI installs it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

from harness.stack import free_port
from kernel.config import Settings

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 30.0
# The page polls every 2.5 s; one poll plus the proxy's connect timeout fits well inside.
PAGE_TIMEOUT_MS = 10_000
KEY = "dashboard-test-key"


def basic(password: str, user: str = "admin") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Process:
    """One `python -m <module>` child, logging to a file, stopped by its PID."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def launch(self, cwd: Path = REPO_ROOT) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.popen

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        assert self.popen is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{' '.join(self.args)} exited with {self.popen.returncode}:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} after {START_TIMEOUT_S:g}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def start(self, ready_url: str) -> None:
        """Starts the server and waits until `ready_url` answers anything over HTTP."""

        def answers() -> bool:
            try:
                httpx.get(ready_url, timeout=1.0)
            except httpx.HTTPError:
                return False
            return True

        self.launch()
        self.wait_until(answers, f"{ready_url} did not answer")

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


@dataclass
class Deployment:
    """An API and a dashboard on free ports, with the ports the API's checks point at."""

    env: dict[str, str]
    api: Process
    web: Process

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.env['WEB_PORT']}"

    def api_health(self) -> dict[str, Any]:
        key = self.env.get("API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(f"{self.api_url}/health", timeout=10, headers=headers)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


class Launcher:
    """Starts deployments and supervisord instances; stops every process in reverse order."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.processes: list[Process] = []
        self.count = 0

    def environment(self, **overrides: str) -> dict[str, str]:
        # Nothing from the caller's environment or .env may leak into the settings.
        env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
        empty = self.base / "empty.env"
        empty.touch()
        env.update(
            ENV_FILE=str(empty),
            DEPLOY_MODE="hybrid",
            DATA_DIR=str(self.base / "data"),
            API_HOST="127.0.0.1",
            API_PORT=str(free_port()),
            WEB_PORT=str(free_port()),
            TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
            MINIO_ENDPOINT=f"127.0.0.1:{free_port()}",
            LLAMA_URL=f"http://127.0.0.1:{free_port()}",
            SUPERVISOR_SOCKET=str(self.base / "no-supervisord.sock"),
            AUTO_START_WORKERS="false",
            LOG_LEVEL="INFO",
        )
        env.update(overrides)
        return env

    def process(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        self.count += 1
        process = Process(args, env, self.base / f"{self.count:02d}-{name}.log")
        self.processes.append(process)
        return process

    def api(self, env: dict[str, str]) -> Process:
        api = self.process("api", [sys.executable, "-m", "app"], env)
        api.start(f"http://127.0.0.1:{env['API_PORT']}/health")
        return api

    def web(self, env: dict[str, str]) -> Process:
        web = self.process("web", [sys.executable, "-m", "app.web"], env)
        web.start(f"http://127.0.0.1:{env['WEB_PORT']}/")
        return web

    def deployment(self, **overrides: str) -> Deployment:
        env = self.environment(**overrides)
        return Deployment(env=env, api=self.api(env), web=self.web(env))

    def supervisord(self, conf: Path, socket_path: Path) -> Process:
        supervisord = str(Path(sys.executable).with_name("supervisord"))
        env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
        process = self.process("supervisord", [supervisord, "-n", "-c", str(conf)], env)
        process.launch(cwd=self.base)
        process.wait_until(socket_path.exists, "supervisord made no socket")
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """API and dashboard sharing API_KEY."""
    started = Launcher(tmp_path_factory.mktemp("keyed"))
    try:
        yield started.deployment(API_KEY=KEY)
    finally:
        started.stop_all()


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    """A fresh Chromium profile; yields a factory of browser contexts (one per test)."""
    if not CHROMIUM.exists():
        reason = f"Debian chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    contexts: list[Any] = []
    with sync_playwright() as playwright:

        def open_context(**options: Any) -> Any:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / f"chromium-profile-{len(contexts)}"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900},
                **options,
            )
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            contexts.append(context)
            return context

        try:
            yield open_context
        finally:
            for context in contexts:
                context.close()


def expect_degraded_page(page: Any, deployment: Deployment) -> None:
    """Every check the API reports shows as a row with an error badge and the API's message."""
    health = deployment.api_health()
    assert health["status"] == "degraded"
    assert set(health["checks"]) >= {"temporal", "s3", "llama", "supervisor"}

    expect(page.locator("#overall")).to_have_text("degraded")
    expect(page.locator("#mode")).to_have_text("mode: hybrid")
    for name, check in health["checks"].items():
        assert check["status"] == "error", (name, check)
        row = page.locator(f'tr[data-check="{name}"]')
        expect(row.locator(".badge")).to_have_text("error")
        expect(row.locator("td.message")).to_have_text(check["message"])
    temporal = deployment.env["TEMPORAL_ADDRESS"]
    expect(page.locator('tr[data-check="temporal"] td.message')).to_contain_text(temporal)
    # /queues and /batches need Temporal: the API's own 503 message shows in each table.
    expect(page.locator("#queue-rows")).to_contain_text(f"Temporal at {temporal}")
    expect(page.locator("#batch-rows")).to_contain_text(f"Temporal at {temporal}")
    expect(page.locator("#banner")).to_be_hidden()


def test_page_shows_degraded_health_then_api_unreachable(
    launcher: Launcher, browser_context: Any
) -> None:
    deployment = launcher.deployment()
    page = browser_context().new_page()
    page.goto(deployment.web_url)
    expect(page).to_have_title("LLM Batch dashboard")
    expect_degraded_page(page, deployment)

    deployment.api.stop()
    stopped = time.monotonic()
    expect(page.locator("#banner")).to_be_visible(timeout=8_000)
    noticed_s = time.monotonic() - stopped
    expect(page.locator("#banner-title")).to_have_text("API unreachable")
    expect(page.locator("#banner-message")).to_contain_text(deployment.api_url)
    expect(page.locator("#overall")).to_have_text("API unreachable")
    assert noticed_s < 8, noticed_s

    # The proxy itself answers in the project's error shape.
    response = httpx.get(f"{deployment.web_url}/api/health", timeout=10)
    assert response.status_code == 503
    assert response.headers["X-API-Unreachable"] == "true"
    error = response.json()["error"]
    assert error["code"] == 503 and error["type"] == "unavailable_error"
    assert error["message"].startswith("API unreachable")

    # The page recovers by itself when the API is back on the same port.
    launcher.api(deployment.env)
    expect(page.locator("#banner")).to_be_hidden(timeout=8_000)
    expect(page.locator('tr[data-check="temporal"] .badge')).to_have_text("error")


SUPERVISORD_CONF = """\
[unix_http_server]
file={socket}

[supervisord]
logfile={base}/supervisord.log
pidfile={base}/supervisord.pid
childlogdir={base}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{socket}

[program:fastapi]
command=sleep 600
autostart=true
startsecs=0

[program:web]
command=false
autostart=true
startsecs=1
startretries=0

[program:worker-cpu]
command=sleep 600
autostart=false
"""


def test_page_lists_supervisord_programs(
    launcher: Launcher, browser_context: Any, tmp_path: Path
) -> None:
    """A real supervisord: each program gets a row with its state; worker states in queues."""
    socket_path = tmp_path / "supervisor.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(socket=socket_path, base=tmp_path))
    launcher.supervisord(conf, socket_path)
    deployment = launcher.deployment(SUPERVISOR_SOCKET=str(socket_path))

    deadline = time.monotonic() + 10
    programs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        programs = deployment.api_health()["checks"]["supervisor"].get("programs", {})
        if programs.get("web", {}).get("state") == "FATAL":
            break
        time.sleep(0.2)
    assert {name: p["state"] for name, p in programs.items()} == {
        "fastapi": "RUNNING",
        "web": "FATAL",
        "worker-cpu": "STOPPED",
    }

    page = browser_context().new_page()
    page.goto(deployment.web_url)
    expected = {
        "fastapi": ("ok", "RUNNING"),
        "web": ("error", "FATAL"),
        "worker-cpu": ("ok", "STOPPED"),
    }
    for name, (status, state) in expected.items():
        row = page.locator(f'tr[data-check="program:{name}"]')
        expect(row.locator(".badge")).to_have_text(status)
        expect(row.locator("td.details")).to_have_text(state)
    expect(page.locator('tr[data-check="program:web"] td.message')).to_have_text(
        programs["web"]["message"]
    )
    expect(page.locator('tr[data-check="supervisor"] td.message')).to_have_text("not healthy: web")


def test_key_protects_every_route_and_reaches_the_api(keyed: Deployment) -> None:
    web = keyed.web_url
    for path in ("/", "/static/app.js", "/api/health", "/api/queues", "/nowhere"):
        response = httpx.get(f"{web}{path}", timeout=10)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        error = response.json()["error"]
        assert error["code"] == 401 and error["type"] == "authentication_error"
    for wrong in ("Bearer nope", basic("nope"), basic(KEY).replace("Basic", "Digest"), "Basic !!"):
        response = httpx.get(f"{web}/api/health", headers={"Authorization": wrong}, timeout=10)
        assert response.status_code == 401, wrong
        assert response.json()["error"]["message"] == "invalid API key"

    page = httpx.get(f"{web}/", headers={"Authorization": basic(KEY, user="anyone")}, timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    script = httpx.get(f"{web}/static/app.js", headers={"Authorization": basic(KEY)}, timeout=10)
    assert script.status_code == 200

    bearer = {"Authorization": f"Bearer {KEY}"}
    health = httpx.get(f"{web}/api/health", headers=bearer, timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"

    # /queues on the API needs the key: without it the API says 401 ...
    assert httpx.get(f"{keyed.api_url}/queues", timeout=10).status_code == 401
    # ... through the dashboard it gets past the key check and fails on Temporal instead.
    queues = httpx.get(f"{web}/api/queues", headers=bearer, timeout=10)
    assert queues.status_code == 503
    assert queues.json()["error"]["message"].startswith(
        f"Temporal at {keyed.env['TEMPORAL_ADDRESS']}"
    )
    assert "X-API-Unreachable" not in queues.headers


def test_dashboard_with_another_key_than_the_api_says_so(
    keyed: Deployment, launcher: Launcher
) -> None:
    env = {**keyed.env, "WEB_PORT": str(free_port()), "API_KEY": "not-the-api-key-at-all"}
    web = launcher.web(env)
    assert web.popen is not None
    response = httpx.get(
        f"http://127.0.0.1:{env['WEB_PORT']}/api/batches",
        headers={"Authorization": "Bearer not-the-api-key-at-all"},
        timeout=10,
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "bad_gateway"
    assert "same API_KEY" in error["message"]


def test_browser_logs_in_with_the_key(keyed: Deployment, browser_context: Any) -> None:
    """Basic auth in the browser: the page and its own fetches carry the credentials."""
    # Headless Chromium has no login prompt: without the key the navigation ends on the
    # 401 challenge (as an error, or as the 401 page after a wrong password).
    for credentials in (None, {"username": "ops", "password": "not-the-key"}):
        denied = browser_context(http_credentials=credentials).new_page()
        try:
            response = denied.goto(keyed.web_url)
        except PlaywrightError as exc:
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
        else:
            assert response is not None and response.status == 401
        expect(denied.locator("#dependency-rows")).to_have_count(0)

    page = browser_context(http_credentials={"username": "ops", "password": KEY}).new_page()
    response = page.goto(keyed.web_url)
    assert response is not None and response.status == 200
    expect_degraded_page(page, keyed)


def test_refuses_a_public_address_without_a_key(launcher: Launcher) -> None:
    env = launcher.environment(API_HOST="0.0.0.0")
    result = subprocess.run(
        [sys.executable, "-m", "app.web"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API_KEY" in result.stderr


# Working with batches, against the real stack ------------------------------------------------


@pytest.fixture
def stack_page(stack: Any, browser_context: Any) -> Iterator[tuple[Any, list[str]]]:
    """A page on the stack's dashboard; collects every answer of 400 or more it got."""
    page = browser_context(accept_downloads=True).new_page()
    failures: list[str] = []
    page.on(
        "response",
        lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    page.goto(stack.web_url)
    yield page, failures


def write_batch_file(path: Path, count: int, prefix: str, max_tokens: int) -> Path:
    lines = [
        json.dumps(
            {
                "custom_id": f"{prefix}{i}",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": max_tokens,
            }
        )
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_batch_in_page(
    page: Any, source: Path, defaults: str = "", shard_size: int | None = None
) -> str:
    page.locator("#batch-file").set_input_files(str(source))
    if defaults:
        page.locator("#batch-defaults").fill(defaults)
    if shard_size:
        page.locator("#batch-shard-size").fill(str(shard_size))
    page.locator("#batch-submit").click()
    expect(page.locator("#submit-message")).to_contain_text("started batch_")
    batch_id = page.locator("#detail-id").text_content() or ""
    assert batch_id.startswith("batch_")
    return batch_id


def download(page: Any, button: str) -> list[dict[str, Any]]:
    with page.expect_download() as started:
        page.locator(button).click()
    path = started.value.path()
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_dashboard_starts_a_batch_and_downloads_its_files(
    stack: Any, stack_page: tuple[Any, list[str]], tmp_path: Path
) -> None:
    page, failures = stack_page
    source = write_batch_file(tmp_path / "prompts.jsonl", 30, "web", max_tokens=4)
    with source.open("a") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "no id"}]}) + "\n")
    batch_id = start_batch_in_page(page, source, defaults='{"temperature": 0}')

    expect(page.locator("#detail-status")).to_have_text("completed", timeout=120_000)
    expect(page.locator("#detail-done")).to_have_text("31 / 31 (100%)")
    expect(page.locator("#detail-failed")).to_have_text("1")
    expect(page.locator("#detail-left")).to_have_text("0s")
    assert page.locator("#detail-rps").inner_text() != "–"
    expect(page.locator("#detail-cost")).to_contain_text("unknown")
    expect(page.locator("#batch-cancel")).to_be_disabled()
    expect(page.locator(f'#batch-rows tr[data-batch="{batch_id}"]')).to_have_class(
        "clickable selected"
    )

    output = download(page, "#download-output")
    assert sorted(line["custom_id"] for line in output) == sorted(f"web{i}" for i in range(30))
    (error,) = download(page, "#download-errors")
    assert error["line"] == 31 and "custom_id" in error["error"]["message"]

    # Reloading keeps following the batch (#batch=ID); nothing on the page is a 404.
    page.reload()
    expect(page.locator("#detail-id")).to_have_text(batch_id)
    expect(page.locator("#detail-status")).to_have_text("completed")
    icon = httpx.get(f"{stack.web_url}/favicon.ico", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert failures == []


def test_dashboard_shows_progress_and_cancels(
    stack: Any, stack_page: tuple[Any, list[str]], tmp_path: Path
) -> None:
    page, _ = stack_page
    source = write_batch_file(tmp_path / "big.jsonl", 3000, "big", max_tokens=8)
    batch_id = start_batch_in_page(page, source, shard_size=40)

    # The chart gets points with a positive rate while the batch runs.
    try:
        page.wait_for_function(
            "() => { const c = document.getElementById('throughput-chart');"
            " return Number(c.dataset.points) >= 2 && Number(c.dataset.maxRps) > 0; }",
            timeout=120_000,
            polling=500,
        )
    except PlaywrightError:
        chart = page.locator("#throughput-chart")
        state = {
            "done": page.locator("#detail-done").text_content(),
            "status": page.locator("#detail-status").text_content(),
            "points": chart.get_attribute("data-points"),
            "max_rps": chart.get_attribute("data-max-rps"),
            "api": httpx.get(f"{stack.api_url}/batch/{batch_id}", timeout=10).json(),
        }
        raise AssertionError(f"no throughput on the chart: {state}") from None
    expect(page.locator("#detail-status")).to_have_text("in_progress")
    assert page.locator("#detail-left").inner_text() not in ("–", "0s")
    expect(page.locator("#download-output")).to_have_text("Download output (so far)")

    page.locator("#batch-cancel").click()
    expect(page.locator("#submit-message")).to_contain_text(f"cancel requested for {batch_id}")
    expect(page.locator("#detail-status")).to_have_text("cancelled", timeout=120_000)
    expect(page.locator("#batch-cancel")).to_be_disabled()

    batch = httpx.get(f"{stack.api_url}/batch/{batch_id}", timeout=10).json()
    output = download(page, "#download-output")
    assert len(output) == batch["request_counts"]["completed"] < 3000
    assert len({line["custom_id"] for line in output}) == len(output)


def test_dashboard_refuses_a_file_that_is_not_jsonl(
    stack: Any, stack_page: tuple[Any, list[str]], tmp_path: Path
) -> None:
    page, _ = stack_page
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "prompt": "x"}\nnot json\n')
    page.locator("#batch-file").set_input_files(str(bad))
    page.locator("#batch-submit").click()
    expect(page.locator("#submit-message")).to_contain_text("line 2 of the file is not JSON")
    expect(page.locator("#batch-detail")).to_be_hidden()
