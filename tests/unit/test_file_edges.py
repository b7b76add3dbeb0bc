"""A batch's data deleted everywhere it is served, only the files a batch names listed, one
model id, and embeddings on or clearly off: services over an in-memory S3 stand-in."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat as stat_mode
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from minio.error import S3Error

from app.core.errors import Conflict, Gone, NotFound
from app.main import create_app
from app.services.batches import BatchService
from app.services.files import FileService
from kernel import keys
from kernel.config import PROJECT_ROOT, Settings, model_alias
from kernel.status import BatchStatus, RequestCounts
from kernel.view import BatchView
from tests.unit.test_api import settings

BATCH = "batch_" + "b" * 32
UPLOADED = "file-" + "c" * 32


@dataclass
class _Obj:
    object_name: str
    size: int
    last_modified: dt.datetime
    metadata: dict[str, str]


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, chunk: int) -> Any:
        yield from (self.data[i : i + chunk] for i in range(0, len(self.data), chunk))

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class MemoryS3:
    """The calls kernel.storage makes, on a dict."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def _missing(self, key: str) -> S3Error:
        return S3Error(None, "NoSuchKey", "missing", key, "", "")  # type: ignore[arg-type]

    def get_object(self, bucket: str, key: str) -> _Response:
        if key not in self.objects:
            raise self._missing(key)
        return _Response(self.objects[key])

    def put_object(self, bucket: str, key: str, data: Any, size: int, **_: Any) -> None:
        self.objects[key] = data.read(size)

    def stat_object(self, bucket: str, key: str) -> _Obj:
        if key not in self.objects:
            raise self._missing(key)
        return _Obj(key, len(self.objects[key]), dt.datetime.now(dt.UTC), {})

    def list_objects(self, bucket: str, prefix: str, recursive: bool) -> list[_Obj]:
        now = dt.datetime.now(dt.UTC)
        return [
            _Obj(k, len(v), now, {})
            for k, v in sorted(self.objects.items())
            if k.startswith(prefix)
        ]

    def remove_object(self, bucket: str, key: str) -> None:
        self.objects.pop(key, None)


def _finished_batch(s3: MemoryS3, input_key: str | None = None) -> None:
    s3.objects.update(
        {
            input_key or keys.input_key(BATCH): b'{"custom_id": "a"}\n{"custom_id": "b"}\n',
            keys.shard_key(BATCH, 0): b'{"custom_id": "a"}\n{"custom_id": "b"}\n',
            keys.result_key(BATCH, 0): b'{"custom_id": "a", "error": null}\n',
            keys.output_key(BATCH): b'{"custom_id": "a", "error": null}\n',
            keys.errors_key(BATCH): b"",
            keys.summary_key(BATCH): b"{}",
        }
    )


def _service(tmp_path: Path, s3: MemoryS3, status: str) -> BatchService:
    service = BatchService(settings(tmp_path), None, s3)  # type: ignore[arg-type]
    batch = BatchStatus(
        id=BATCH,
        status=status,
        created_at=1,
        endpoint="/v1/chat/completions",
        input_key=keys.input_key(BATCH),
        request_counts=RequestCounts(total=2, completed=2, failed=0),
    )

    async def describe(batch_id: str) -> tuple[None, None]:
        if batch_id != BATCH:
            raise NotFound(f"no batch with id {batch_id!r}")
        return None, None

    async def read(description: Any, batch_id: str) -> BatchStatus:
        return batch

    async def get(batch_id: str) -> BatchView:
        return BatchView.of(batch, 10.0)

    service._describe = describe  # type: ignore[method-assign,assignment]
    service._read = read  # type: ignore[method-assign]
    service.get = get  # type: ignore[method-assign]
    return service


def _lines(service: BatchService, errors: bool = False) -> bytes:
    _, chunks, _ = asyncio.run(service.results(BATCH, errors=errors))
    return b"".join(chunks)


def test_deleting_a_finished_batch_removes_every_object_and_its_results(tmp_path: Path) -> None:
    s3 = MemoryS3()
    _finished_batch(s3)
    service = _service(tmp_path, s3, "completed")
    assert _lines(service) == b'{"custom_id": "a", "error": null}\n'

    answer = asyncio.run(service.delete(BATCH))
    assert answer.deleted and answer.objects_removed == 6
    assert answer.input_kept is None
    assert list(s3.objects) == [keys.deleted_key(BATCH)]  # the record only
    for errors in (False, True):
        with pytest.raises(Gone, match="deleted at"):
            _lines(service, errors=errors)
    files = FileService(settings(tmp_path), s3)  # type: ignore[arg-type]
    listed, _ = asyncio.run(files.list(None, 100, None, "desc"))
    assert listed == []
    with pytest.raises(NotFound):
        asyncio.run(files.get(keys.batch_file_id(BATCH, "output")))
    again = asyncio.run(service.delete(BATCH))  # idempotent
    assert again.objects_removed == 0


def test_an_uploaded_input_is_kept_and_named(tmp_path: Path) -> None:
    s3 = MemoryS3()
    _finished_batch(s3, input_key=keys.file_key(UPLOADED))
    service = _service(tmp_path, s3, "cancelled")
    service._read = _read_with_input(keys.file_key(UPLOADED))  # type: ignore[method-assign]
    answer = asyncio.run(service.delete(BATCH))
    assert answer.input_kept == keys.file_key(UPLOADED)
    assert answer.input_file_kept == UPLOADED
    assert keys.file_key(UPLOADED) in s3.objects


def _read_with_input(key: str) -> Any:
    async def read(description: Any, batch_id: str) -> BatchStatus:
        return BatchStatus(id=BATCH, status="cancelled", input_key=key)

    return read


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
def test_a_running_batch_is_not_deleted(tmp_path: Path, status: str) -> None:
    s3 = MemoryS3()
    _finished_batch(s3)
    before = dict(s3.objects)
    with pytest.raises(Conflict, match="cancel it first"):
        asyncio.run(_service(tmp_path, s3, status).delete(BATCH))
    assert s3.objects == before


def test_deleting_the_output_file_stops_the_results_route(tmp_path: Path) -> None:
    s3 = MemoryS3()
    _finished_batch(s3)
    s3.objects[keys.errors_key(BATCH)] = b'{"custom_id": "b", "error": {}}\n'
    service = _service(tmp_path, s3, "completed")
    files = FileService(settings(tmp_path), s3)  # type: ignore[arg-type]
    asyncio.run(files.delete(keys.batch_file_id(BATCH, "output")))
    # The shard results still hold the line; it is not served again.
    assert keys.result_key(BATCH, 0) in s3.objects
    with pytest.raises(Gone, match="output file was deleted"):
        _lines(service)
    assert _lines(service, errors=True) == b'{"custom_id": "b", "error": {}}\n'


def test_an_empty_error_file_is_not_listed_nor_served(tmp_path: Path) -> None:
    s3 = MemoryS3()
    _finished_batch(s3)
    files = FileService(settings(tmp_path), s3)  # type: ignore[arg-type]
    listed, _ = asyncio.run(files.list(None, 100, None, "desc"))
    assert sorted(f.id for f in listed) == [
        keys.batch_file_id(BATCH, "input"),
        keys.batch_file_id(BATCH, "output"),
    ]
    with pytest.raises(NotFound):
        asyncio.run(files.get(keys.batch_file_id(BATCH, "errors")))


def test_delete_batch_of_an_unknown_id_is_a_404(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        asyncio.run(_service(tmp_path, MemoryS3(), "completed").delete("batch_" + "0" * 32))


@pytest.mark.parametrize(
    ("model", "alias"),
    [
        ("models/tiny-llama.gguf", "tiny-llama"),
        ("/abs/path/Qwen3-8B-Q4_K_M.gguf", "Qwen3-8B-Q4_K_M"),
        ("ggml-org/gemma-3-1b-it-GGUF:Q4_K_M", "ggml-org/gemma-3-1b-it-GGUF"),
        ("ggml-org/gemma-3-1b-it-GGUF", "ggml-org/gemma-3-1b-it-GGUF"),
        ("", "default"),
    ],
)
def test_model_alias(model: str, alias: str) -> None:
    assert model_alias(model) == alias


def test_one_model_id_by_default_and_the_setting_wins() -> None:
    local = Settings(_env_file=None, DEPLOY_MODE="local")
    assert local.LLAMA_MODEL_ALIAS == "tiny-llama"
    assert local.launcher_environment()["LLAMA_MODEL_ALIAS"] == "tiny-llama"
    named = Settings(_env_file=None, DEPLOY_MODE="local", LLAMA_MODEL_ALIAS="m")
    assert named.LLAMA_MODEL_ALIAS == "m"


def _llama_args(tmp_path: Path, **env: str) -> list[str]:
    fake = tmp_path / "llama-server"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat_mode.S_IEXEC)
    local = Settings(_env_file=None, DEPLOY_MODE="local", **env)  # type: ignore[arg-type]
    values = {**os.environ, **local.launcher_environment(), "LLAMA_SERVER_BIN": str(fake)}
    model = PROJECT_ROOT / "models" / "tiny-llama.gguf"
    if not model.exists():
        values["LLAMA_MODEL"] = str(fake.with_name("m.gguf"))
        fake.with_name("m.gguf").write_bytes(b"")
    done = subprocess.run(
        ["bash", "scripts/run_program.sh", "llama"],
        cwd=PROJECT_ROOT,
        env=values,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def test_llama_server_gets_the_alias_and_embeddings(tmp_path: Path) -> None:
    args = _llama_args(tmp_path)
    assert args[args.index("--alias") + 1] == "tiny-llama"
    assert "--embeddings" in args and args[args.index("--pooling") + 1] == "mean"
    off = _llama_args(tmp_path, LLAMA_EMBEDDINGS="false")
    assert "--embeddings" not in off and "--pooling" not in off
    own = _llama_args(tmp_path, LLAMA_POOLING="model")
    assert "--embeddings" in own and "--pooling" not in own


def test_embeddings_off_is_a_clear_400_naming_the_setting(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, LLAMA_EMBEDDINGS=False))) as client:
        answer = client.post("/v1/embeddings", json={"input": "hi"})
    assert answer.status_code == 400
    assert "LLAMA_EMBEDDINGS=true" in answer.json()["error"]["message"]
    assert answer.json()["error"]["code"] == "embeddings_disabled"


def test_an_embeddings_line_on_a_box_without_embeddings_names_the_setting() -> None:
    from workers.llama import Answer, LlamaClient

    client = LlamaClient("http://127.0.0.1:1")
    refusal = b'{"error": {"code": 501, "message": "start it with --embeddings"}}'

    async def slots(refresh: bool = False) -> int:
        return 1

    async def answer(*_: Any, **__: Any) -> Answer:
        return Answer(501, refusal)

    client.slots = slots  # type: ignore[method-assign]
    client._with_retries = answer  # type: ignore[method-assign]
    line = asyncio.run(client.run("e1", "/v1/embeddings", {"input": "hi"}))
    assert line["custom_id"] == "e1"
    assert line["error"]["code"] == "embeddings_disabled"
    assert "LLAMA_EMBEDDINGS=true" in line["error"]["message"]
    other = asyncio.run(client.run("c1", "/v1/chat/completions", {"messages": []}))
    assert other["error"]["code"] == "llama_http_501"
