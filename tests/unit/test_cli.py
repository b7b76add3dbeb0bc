"""The `llm-batch` CLI against an in-process double of the API (httpx.MockTransport): what
it sends, what it prints and its exit codes. Against the real stack: test_operator.py."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

import cli.main as main
from app.services.batches import idempotent_id as api_idempotent_id
from cli.client import Api, Target, default_url, resolve
from kernel.config import Settings
from kernel.keys import idempotent_id

BATCH = {
    "id": "batch_1",
    "object": "batch",
    "endpoint": "/v1/chat/completions",
    "status": "completed",
    "request_counts": {"total": 10, "completed": 9, "failed": 1},
    "usage": {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150},
    "gpu_seconds": 3.0,
    "requests_per_second": 5.0,
    "tokens_per_second": 75.0,
    "seconds_left": 0.0,
    "elapsed_seconds": 2.0,
    "cost_usd": 0.0015,
    "usd_per_million_output_tokens": 30.0,
}


FILE_ID = "file-" + "f" * 32


class Upload:
    """The file part of a multipart upload, read as it streams in: its size, its digest, a
    copy when small, and the largest chunk the client sent."""

    KEEP_BYTES = 1 << 20

    def __init__(self, request: httpx.Request) -> None:
        boundary = request.headers["content-type"].split("boundary=", 1)[1].encode()
        trailer = b"\r\n--" + boundary + b"--\r\n"
        self.digest = hashlib.sha256()
        self.size = 0
        self.largest_chunk = 0
        self.content = b""
        self.form = b""
        head = b""
        held = b""
        in_file = False
        assert isinstance(request.stream, httpx.SyncByteStream)
        for chunk in request.stream:
            self.largest_chunk = max(self.largest_chunk, len(chunk))
            if not in_file:
                head += chunk
                start = head.find(b'name="file"')
                if start < 0 or head.find(b"\r\n\r\n", start) < 0:
                    continue
                body_at = head.find(b"\r\n\r\n", start) + 4
                self.form, chunk, in_file = head[:body_at], head[body_at:], True
            held += chunk
            if len(held) > len(trailer):
                self._take(held[: -len(trailer)])
                held = held[-len(trailer) :]
        assert held == trailer, held

    def _take(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        if self.size <= self.KEEP_BYTES:
            self.content += data


class FakeApi:
    """Answers like the API; remembers the requests and what was uploaded."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.statuses: list[str] = ["completed"]
        self.uploads: list[Upload] = []
        self.deleted: list[str] = []
        self.refuse_batch = 0  # an HTTP status to refuse POST /batch with
        self.others: dict[str, dict[str, Any]] = {}  # more batches, by id

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path != "/v1/files":
            request.read()
        if path == "/v1/files" and request.method == "POST":
            upload = Upload(request)  # read as it streams, never whole
            self.uploads.append(upload)
            file = {"id": FILE_ID, "object": "file", "bytes": upload.size, "purpose": "batch"}
            return httpx.Response(200, json=file)
        if path == f"/v1/files/{FILE_ID}" and request.method == "DELETE":
            self.deleted.append(FILE_ID)
            return httpx.Response(200, json={"id": FILE_ID, "deleted": True})
        if path == "/batch" and request.method == "POST":
            if self.refuse_batch:
                code = self.refuse_batch
                error = {"code": code, "type": "invalid_request", "message": "bad shard_size"}
                return httpx.Response(code, json={"error": error})
            return httpx.Response(202, json={**BATCH, "status": "validating"})
        if path.removeprefix("/batch/") in self.others:
            return httpx.Response(200, json=self.others[path.removeprefix("/batch/")])
        if path == "/batch/batch_1":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return httpx.Response(200, json={**BATCH, "status": status})
        if path == "/batch/batch_1/results":
            return httpx.Response(200, content=b'{"custom_id": "a"}\n{"custom_id": "b"}\n')
        if path == "/batches":
            return httpx.Response(200, json={"object": "list", "data": [BATCH]})
        if path == "/health":
            return httpx.Response(200, json={"status": "degraded", "mode": "local", "checks": {}})
        message = f"no batch with id {path.rsplit('/', 1)[-1]!r}"
        return httpx.Response(
            404, json={"error": {"code": 404, "type": "not_found", "message": message}}
        )


class Transport(httpx.BaseTransport):
    """httpx.MockTransport reads a request's body whole before its handler sees it; this
    hands the request over as it is, so an upload arrives chunk by chunk as on a socket."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    transport = Transport(fake.handler)
    monkeypatch.setattr(main, "Api", lambda target: Api(target, transport=transport))
    monkeypatch.setattr(main, "POLL_SECONDS", 0.0)
    yield fake


Invoke = Callable[..., Any]


@pytest.fixture
def invoke(api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.chdir(tmp_path)
    for name in ("LLM_BATCH_URL", "LLM_BATCH_API_KEY", "API_KEY"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main.app, ["--url", "http://api.test", *args])

    return run


def test_status_exit_codes_follow_the_batch(api: FakeApi, invoke: Invoke) -> None:
    for status, code in (("completed", 0), ("failed", 1), ("cancelled", 3), ("in_progress", 0)):
        api.statuses = [status]
        result = invoke("--json", "status", "batch_1")
        assert result.exit_code == code, status
        assert json.loads(result.stdout)["status"] == status


def test_status_table_shows_rates_time_left_and_cost(invoke: Invoke) -> None:
    result = invoke("status", "batch_1")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "9 completed, 1 failed of 10" in text
    assert "5.0 req/s, 75.0 tok/s" in text
    assert "$0.0015" in text and "$30.00" in text


def test_status_table_shows_the_cost_of_each_box(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BATCH, "boxes", {"vast-1": 6, "vast-2": 4})
    monkeypatch.setitem(
        BATCH,
        "box_costs",
        {
            "vast-1": {"gpu_seconds": 1.8, "price_per_hour": 0.4, "cost_usd": 0.0002},
            "vast-2": {"gpu_seconds": 1.2, "price_per_hour": 3.9, "cost_usd": 0.0013},
        },
    )
    result = invoke("status", "batch_1")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "vast-1: 6, vast-2: 4" in text
    assert "vast-1 1.8s GPU at $0.4/h: $0.0002" in text
    assert "vast-2 1.2s GPU at $3.9/h: $0.0013" in text


def test_status_without_a_box_price_says_how_to_set_one(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BATCH, "cost_usd", None)
    result = invoke("status", "batch_1")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "cost unknown: no box price (set GPU_PRICE_PER_HOUR on the box)" in text


def test_submit_uploads_the_file_then_posts_the_batch_with_its_options(
    api: FakeApi, invoke: Invoke, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a", "prompt": "x"}\n\n{"custom_id": "b", "prompt": "y"}\n')
    result = invoke(
        "submit",
        str(source),
        "--endpoint",
        "/v1/completions",
        "--defaults",
        '{"max_tokens": 4}',
        "--metadata",
        "project=demo",
        "--metadata",
        "run=7=b",
        "--max-cost",
        "2.5",
        "--shard-size",
        "7",
        "--completion-window",
        "24h",
        "--idempotency-key",
        "nightly-2026-12-03",
    )
    assert result.exit_code == 0, result.output
    assert "batch_1 validating (2 requests)" in result.stdout
    assert f"uploaded in.jsonl: 2 lines, 69 B (100%) as {FILE_ID}" in result.stderr
    assert "follow it with: llm-batch watch batch_1" in result.stderr
    lookup, upload, create = api.requests
    assert lookup.url.path == "/batch/" + idempotent_id("batch", "nightly-2026-12-03")
    assert (upload.method, upload.url.path) == ("POST", "/v1/files")
    assert b'name="purpose"\r\n\r\nbatch\r\n' in api.uploads[0].form
    assert b'filename="in.jsonl"' in api.uploads[0].form
    assert api.uploads[0].content == source.read_bytes()
    assert (create.method, create.url.path) == ("POST", "/batch")
    assert create.headers["Idempotency-Key"] == "nightly-2026-12-03"
    assert json.loads(create.content) == {
        "input_key": f"files/{FILE_ID}",
        "endpoint": "/v1/completions",
        "defaults": {"max_tokens": 4},
        "metadata": {"project": "demo", "run": "7=b"},
        "max_cost_usd": 2.5,
        "shard_size": 7,
        "completion_window": "24h",
    }


def test_submit_again_with_the_same_idempotency_key_uploads_nothing(
    api: FakeApi, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = idempotent_id("batch", "k-1")
    assert batch_id == api_idempotent_id("batch", "k-1")  # the id the API gives that key
    monkeypatch.setitem(BATCH, "id", batch_id)
    api.others[batch_id] = {**BATCH, "status": "in_progress"}
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a", "prompt": "x"}\n')
    result = invoke("submit", str(source), "--idempotency-key", "k-1")
    assert result.exit_code == 0, result.output
    assert f"{batch_id} in_progress (10 requests)" in result.stdout
    assert "already submitted with this idempotency key; nothing uploaded" in result.stderr
    assert api.uploads == []


def test_submit_streams_a_large_file_in_bounded_memory(
    api: FakeApi, invoke: Invoke, tmp_path: Path
) -> None:
    """200,000 lines (about 22 MB) go up in chunks of about 1 MiB: the bytes arrive intact
    and the peak allocation (the CLI's and this double's together) stays under 8 MiB."""
    source = tmp_path / "big.jsonl"
    line = '{"custom_id": "q%06d", "messages": [{"role": "user", "content": "%06d %s"}]}\n'
    padding = "say it in one short sentence"
    with source.open("w") as handle:
        for n in range(200_000):
            handle.write(line % (n, n, padding))
    size = source.stat().st_size
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        result = invoke("submit", str(source))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert "batch_1 validating (200000 requests)" in result.stdout
    assert "uploaded big.jsonl: 200,000 lines, " in result.stderr
    upload = api.uploads[0]
    assert (upload.size, upload.digest.hexdigest()) == (size, expected)
    assert upload.largest_chunk <= 2 << 20
    assert int(api.requests[0].headers["content-length"]) > size  # not chunked: sized
    assert size > 20_000_000 and peak < 8 << 20, (size, peak)
    print(f"file {size} bytes, peak traced allocation {peak} bytes")


def test_submit_shows_upload_progress_on_a_terminal(
    api: FakeApi, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(
        main,
        "err",
        Console(file=screen, force_terminal=True, color_system=None, highlight=False, width=160),
    )
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a", "prompt": "x"}\n' * 3000)
    result = invoke("submit", str(source))
    assert result.exit_code == 0, result.output
    shown = screen.getvalue()
    assert "upload" in shown and "100%" in shown and "3,000 lines" in shown
    assert "102.0 kB" in shown  # bytes sent of the file's size
    assert f"uploaded in.jsonl: 3,000 lines, 102.0 kB (100%) as {FILE_ID}" in shown


def test_submit_removes_the_upload_when_the_batch_is_refused(
    api: FakeApi, invoke: Invoke, tmp_path: Path
) -> None:
    api.refuse_batch = 400
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a", "prompt": "x"}\n')
    result = invoke("submit", str(source))
    assert "HTTP 400: bad shard_size" in str(result.exception)
    assert api.deleted == [FILE_ID]
    api.refuse_batch = 503  # a batch may have started on it: kept
    result = invoke("submit", str(source))
    assert "HTTP 503: bad shard_size" in str(result.exception)
    assert api.deleted == [FILE_ID]


def test_submit_watch_ends_with_the_batch_exit_code(
    api: FakeApi, invoke: Invoke, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a", "prompt": "x"}\n')
    api.statuses = ["in_progress", "in_progress", "cancelled"]
    result = invoke("submit", str(source), "--watch")
    assert result.exit_code == 3
    assert "10/10 done (1 failed), 5.0 req/s, 75.0 tok/s, 0s left, $0.0015" in result.output


def test_submit_refuses_bad_input_in_one_line(
    api: FakeApi, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a"}\n{oops\n')
    result = invoke("submit", str(source))
    assert result.exit_code == 2
    assert f"error: {source}:2: not JSON" in result.output
    source.write_text('{"custom_id": "a"}\n' * 3)
    result = invoke("submit", str(source), "--defaults", "[1]")
    assert result.exit_code == 2 and "--defaults must be a JSON object" in result.output
    assert api.requests == []


def test_submit_takes_more_lines_than_the_inline_limit(
    api: FakeApi, invoke: Invoke, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("MAX_INLINE_ITEMS=2\n")
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a"}\n' * 3)
    result = invoke("submit", str(source))
    assert result.exit_code == 0, result.output
    assert "batch_1 validating (3 requests)" in result.stdout


def test_submit_refuses_lines_that_are_not_objects_and_empty_files(
    api: FakeApi, invoke: Invoke, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id": "a"}\n\n[1, 2]\n')
    result = invoke("submit", str(source))
    assert result.exit_code == 2
    assert f"error: {source}:3: expected a JSON object, got list" in result.output
    source.write_text("\n\n")
    result = invoke("submit", str(source))
    assert result.exit_code == 2 and "the file has no request lines" in result.output
    result = invoke("submit", str(source), "--metadata", "novalue")
    assert result.exit_code == 2 and "--metadata takes KEY=VALUE, got 'novalue'" in result.output
    assert api.requests == []


def test_results_write_a_file_and_health_exits_1_when_degraded(
    invoke: Invoke, tmp_path: Path
) -> None:
    target = tmp_path / "out.jsonl"
    result = invoke("results", "batch_1", "-o", str(target))
    assert result.exit_code == 0
    assert target.read_text().splitlines() == ['{"custom_id": "a"}', '{"custom_id": "b"}']
    assert invoke("health").exit_code == 1


def test_list_prints_ids_unwrapped(invoke: Invoke) -> None:
    result = invoke("list")
    assert result.exit_code == 0 and "batch_1" in result.stdout
    assert json.loads(invoke("--json", "list").stdout)[0]["id"] == "batch_1"


def test_list_filters_by_status_and_metadata_and_shows_metadata(
    api: FakeApi, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BATCH, "metadata", {"project": "demo", "run": "7"})
    result = invoke(
        "list", "--status", "completed", "--metadata", "project=demo", "--metadata", "run=7"
    )
    assert result.exit_code == 0, result.output
    assert "project=demo, run=7" in result.stdout
    assert dict(api.requests[0].url.params) == {
        "limit": "20",
        "status": "completed",
        "metadata[project]": "demo",
        "metadata[run]": "7",
    }
    assert invoke("list").exit_code == 0
    assert dict(api.requests[1].url.params) == {"limit": "20"}


def test_api_errors_become_one_line(
    monkeypatch: pytest.MonkeyPatch, api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["llm-batch", "--url", "http://api.test", "status", "batch_x"])
    with pytest.raises(SystemExit) as exited:
        main.run()
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: GET /batch/batch_x: HTTP 404: no batch with id 'batch_x'\n"
    )


def test_url_and_key_come_from_flags_then_environment_then_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("LLM_BATCH_URL", "LLM_BATCH_API_KEY", "API_KEY", "ENV_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("API_PORT=8123\nAPI_KEY=from-file-0123456789\n")
    assert resolve(None, None) == Target("http://127.0.0.1:8123", "from-file-0123456789", 50_000)
    monkeypatch.setenv("LLM_BATCH_URL", "http://env:1/")
    monkeypatch.setenv("LLM_BATCH_API_KEY", "from-env")
    assert resolve(None, None).url == "http://env:1"
    assert resolve(None, None).key == "from-env"
    assert resolve("http://flag:2", "from-flag") == Target("http://flag:2", "from-flag", 50_000)
    # A laptop that deploys to Vast reaches the API through `./deploy_vast.sh tunnel`.
    tunnelled = Settings(_env_file=None, VAST_HOST="1.2.3.4", TUNNEL_API_PORT=18000)
    assert default_url(tunnelled) == "http://127.0.0.1:18000"
    assert default_url(Settings(_env_file=None, API_HOST="0.0.0.0", API_KEY="k" * 16)) == (
        "http://127.0.0.1:8000"
    )


def test_formatting() -> None:
    assert main.duration(None) == "–"
    assert main.duration(59.6) == "1m00s"
    assert main.duration(7325) == "2h02m"
    assert main.money(None) == "cost unknown"
    assert main.money(12.345) == "$12.35"
    assert main.rate(1234.5, "req/s") == "1,234 req/s"


RETRY = {
    **BATCH,
    "id": "batch_2",
    "status": "validating",
    "retry_of": "batch_1",
    "retry": {
        "of": "batch_1",
        "failed": 1,
        "unfinished": 0,
        "left_out": {"invalid_request_line": 2},
        "left_out_reason": "invalid input lines (invalid_request_line) would fail the same way",
    },
}


@pytest.mark.parametrize(
    ("flags", "body"),
    [
        ((), {"failed": True, "unfinished": True}),
        (("--failed",), {"failed": True, "unfinished": False}),
        (("--unfinished",), {"failed": False, "unfinished": True}),
        (("--failed", "--unfinished"), {"failed": True, "unfinished": True}),
    ],
)
def test_retry_posts_what_to_send_again(
    api: FakeApi, invoke: Invoke, flags: tuple[str, ...], body: dict[str, bool]
) -> None:
    api.others["batch_1/retry"] = RETRY
    result = invoke("retry", "batch_1", *flags)
    assert result.exit_code == 0, result.output
    request = api.requests[-1]
    assert (request.method, request.url.path) == ("POST", "/batch/batch_1/retry")
    assert json.loads(request.content) == body
    assert "batch_2 validating (retry of batch_1)" in result.stdout
    assert "left out: 2 invalid_request_line" in result.stderr


def test_retry_watch_ends_with_the_retry_exit_code_and_status_shows_the_links(
    api: FakeApi, invoke: Invoke
) -> None:
    api.others["batch_1/retry"] = RETRY
    api.others["batch_2"] = {**RETRY, "status": "cancelled", "is_terminal": True}
    assert invoke("retry", "batch_1", "--watch").exit_code == 3
    api.others["batch_1"] = {**BATCH, "retried_by": ["batch_2", "batch_3"]}
    shown = " ".join(invoke("status", "batch_1").stdout.split())
    assert "retried by batch_2, batch_3" in shown
    assert "retry of batch_1" in " ".join(invoke("status", "batch_2").stdout.split())


def test_results_merged_asks_for_the_chain(api: FakeApi, invoke: Invoke) -> None:
    api.others["batch_1/results"] = {}
    invoke("results", "batch_1", "--merged")
    assert api.requests[-1].url.params["merged"] == "true"
