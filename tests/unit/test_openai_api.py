"""The OpenAI-compatible routes without servers: error shape, key, validation, docs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openai.types import Batch, FileObject

from app.core.errors import InvalidRequest
from app.main import create_app
from app.services.files import StoredFile, check_jsonl
from app.services.openai_compat import openai_batch
from kernel.keys import errors_key, file_id_for_key, output_key
from kernel.lifecycle import completion_window_seconds
from kernel.status import BatchErrors, BatchStatus, RequestCounts, Usage
from kernel.view import BatchView
from tests.unit.test_api import settings

AUTH = {"Authorization": "Bearer sekret-0123456789"}
BATCH_ID = "batch_" + "a" * 32


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path, API_KEY="sekret-0123456789"))) as client:
        yield client


def test_v1_routes_need_the_key_and_answer_in_openai_shape(keyed: TestClient) -> None:
    for method, path in [
        ("get", "/v1/files"),
        ("post", "/v1/files"),
        ("get", "/v1/batches"),
        ("post", "/v1/batches"),
        ("post", "/v1/chat/completions"),
        ("get", "/v1/models"),
    ]:
        response = getattr(keyed, method)(path)
        assert response.status_code == 401, path
        assert response.json() == {
            "error": {
                "message": "missing API key: send 'Authorization: Bearer <API_KEY>'",
                "type": "authentication_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }


def test_docs_need_no_key_and_load_their_assets_from_the_api(keyed: TestClient) -> None:
    assert keyed.get("/openapi.json").status_code == 200
    page = keyed.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text
    assert "/static-offline-docs/swagger-ui-bundle.js" in page.text
    asset = keyed.get("/static-offline-docs/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000


def test_every_v1_operation_declares_its_response(keyed: TestClient) -> None:
    paths = keyed.get("/openapi.json").json()["paths"]
    v1 = {path: ops for path, ops in paths.items() if path.startswith("/v1/")}
    assert set(v1) >= {
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/cancel",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
    }
    for path, ops in v1.items():
        for method, op in ops.items():
            assert op["responses"]["200"]["content"], (method, path)


def test_v1_validation_errors_name_the_param(keyed: TestClient) -> None:
    response = keyed.post("/v1/batches", json={"endpoint": "/v1/chat/completions"}, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input_file_id"
    assert error["type"] == "invalid_request_error"
    assert "input_file_id" in error["message"]

    no_file = keyed.post("/v1/files", data={"purpose": "batch"}, headers=AUTH)
    assert no_file.status_code == 400
    assert no_file.json()["error"]["param"] == "file"


def test_unsupported_endpoint_and_stream_are_clear_400s(keyed: TestClient) -> None:
    batch = keyed.post(
        "/v1/batches",
        json={"input_file_id": "file-x", "endpoint": "/v1/responses"},
        headers=AUTH,
    )
    assert batch.status_code == 400
    assert batch.json()["error"]["param"] == "endpoint"
    assert "/v1/responses" in batch.json()["error"]["message"]

    stream = keyed.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers=AUTH,
    )
    assert stream.status_code == 400
    assert stream.json()["error"]["param"] == "stream"


def test_unknown_v1_route_is_a_404_in_openai_shape(keyed: TestClient) -> None:
    response = keyed.post("/v1/responses", json={}, headers=AUTH)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert keyed.get("/nowhere", headers=AUTH).json()["error"]["code"] == 404


def test_a_file_id_that_cannot_exist_is_a_404(keyed: TestClient) -> None:
    response = keyed.get("/v1/files/not-a-file", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "No such File object: not-a-file"


@pytest.mark.parametrize(
    ("window", "seconds"), [("24h", 86_400), ("90s", 90), ("5m", 300), (" 2h ", 7_200)]
)
def test_completion_windows(window: str, seconds: int) -> None:
    assert completion_window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["", "24", "h", "1d", "-5s", "0s", "721h", "1.5h"])
def test_bad_completion_windows(window: str) -> None:
    with pytest.raises(ValueError, match="completion_window"):
        completion_window_seconds(window)


def test_batch_files_map_to_the_batch_objects() -> None:
    assert file_id_for_key(output_key(BATCH_ID)) == f"file-{BATCH_ID}-output"
    assert file_id_for_key(errors_key(BATCH_ID)) == f"file-{BATCH_ID}-errors"
    assert file_id_for_key(f"batches/{BATCH_ID}/shards/000000.jsonl") is None
    assert file_id_for_key("files/file-" + "b" * 32) == "file-" + "b" * 32


def test_upload_check_counts_lines_and_names_the_first_bad_one() -> None:
    assert check_jsonl(io.BytesIO(b'{"custom_id": "a"}\n\n{"custom_id": "b"}')) == 2
    with pytest.raises(InvalidRequest, match="file line 2 is not valid JSON"):
        check_jsonl(io.BytesIO(b'{"a": 1}\nnot json\n'))
    with pytest.raises(InvalidRequest, match="file line 1: expected a JSON object, got list"):
        check_jsonl(io.BytesIO(b"[1, 2]\n"))
    with pytest.raises(InvalidRequest, match="no request line"):
        check_jsonl(io.BytesIO(b"\n\n"))
    with pytest.raises(InvalidRequest, match="longer than"):
        check_jsonl(io.BytesIO(b'{"a": "' + b"x" * 1_000_001 + b'"}\n'))


def test_the_batch_object_has_every_field_of_the_clients_model() -> None:
    status = BatchStatus(
        id=BATCH_ID,
        status="expired",
        input_key="files/file-" + "c" * 32,
        output_key=output_key(BATCH_ID),
        error_key=errors_key(BATCH_ID),
        request_counts=RequestCounts(total=3, completed=2, failed=1),
        usage=Usage(input_tokens=10, output_tokens=5, total_tokens=15),
        errors=BatchErrors(message="x"),
        created_at=100,
        completion_window="90s",
        expires_at=190,
        expired_at=191,
    )
    dumped = openai_batch(BatchView.of(status, now=200), "tiny").model_dump(mode="json")
    assert set(Batch.model_fields) <= set(dumped)
    batch = Batch.model_validate(dumped)
    assert batch.input_file_id == "file-" + "c" * 32
    assert batch.output_file_id == f"file-{BATCH_ID}-output"
    assert batch.error_file_id == f"file-{BATCH_ID}-errors"
    assert batch.usage is not None and batch.usage.total_tokens == 15
    assert batch.status == "expired" and batch.expired_at == 191

    running = openai_batch(BatchView.of(status.model_copy(update={"status": "in_progress"}), 200))
    assert running.output_file_id is None and running.error_file_id is None

    stored = StoredFile("file-" + "c" * 32, "files/x", "in.jsonl", "batch", 12, 100)
    file = stored.openai().model_dump(mode="json")
    assert set(FileObject.model_fields) <= set(file)
    FileObject.model_validate(file)


def test_v1_batches_listing_refuses_unknown_query_parameters(keyed: TestClient) -> None:
    response = keyed.get("/v1/batches?limit=2&bogus=1&statuss=x", headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "bogus" in error["message"] and "statuss" in error["message"]
    assert error["param"] == "bogus"
    assert error["code"] == "unknown_parameter"
