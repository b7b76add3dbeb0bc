"""The storage layer (kernel.storage) against a real S3 server: SeaweedFS, started alone by
scripts/run_program.sh as the stack starts it, on free ports, stopped by pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error

from harness.stack import REPO_ROOT, free_port_block
from kernel import storage

BUCKET = "storage-test"
ACCESS_KEY = "test-access"
SECRET_KEY = "test-secret-key"


class S3Server:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port_block(10)
        env = {
            **os.environ,
            "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "S3_HOST": "127.0.0.1",
            "S3_PORT": str(self.port),
            "MINIO_ACCESS_KEY": ACCESS_KEY,
            "MINIO_SECRET_KEY": SECRET_KEY,
            "DATA_DIR": str(data_dir),
        }
        self.log = data_dir / "s3.log"
        with open(self.log, "wb") as out:  # the script execs the server: its pid is the server's
            self.process = subprocess.Popen(
                ["bash", "scripts/run_program.sh", "s3"],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def client(self, pool: urllib3.PoolManager | None = None) -> Minio:
        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            secure=False,
            http_client=pool,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        probe = self.client(urllib3.PoolManager(timeout=2.0, retries=urllib3.Retry(total=0)))
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the S3 server exited: {self.log.read_text()[-2000:]}")
            try:
                storage.ensure_bucket(probe, BUCKET)
                return
            except storage.S3_FAILURES:
                time.sleep(0.5)
        raise AssertionError(f"the S3 server did not come up: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """By pid: SIGTERM, and SIGKILL when it is still there 30 s later."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        finally:
            self.process.kill()  # a no-op once it has exited


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    running = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def s3(server: S3Server) -> Minio:
    return server.client()


def free_connections(pool: urllib3.PoolManager, server: S3Server) -> int:
    """Connections of the pool not handed out (urllib3 keeps a slot for each)."""
    return pool.connection_from_host("127.0.0.1", server.port, "http").pool.qsize()  # type: ignore[union-attr]


def test_jsonl_written_then_read_line_by_line(s3: Minio) -> None:
    records = [{"custom_id": f"r{i}", "n": i} for i in range(100)]
    size = storage.write_jsonl(s3, BUCKET, "lines/a.jsonl", records)
    assert size == sum(len(json.dumps(r)) + 1 for r in records)
    assert [json.loads(line) for line in storage.read_lines(s3, BUCKET, "lines/a.jsonl")] == records
    stat = storage.stat(s3, BUCKET, "lines/a.jsonl")
    assert stat is not None and stat.size == size
    assert stat.content_type == storage.JSONL


def test_read_lines_skips_blank_lines_and_keeps_a_last_line_without_newline(s3: Minio) -> None:
    storage.put_bytes(s3, BUCKET, "lines/blank.jsonl", b'{"a":1}\n\n  \n{"b":2}\n{"c":3}')
    assert list(storage.read_lines(s3, BUCKET, "lines/blank.jsonl")) == [
        b'{"a":1}',
        b'{"b":2}',
        b'{"c":3}',
    ]


def test_an_object_past_one_part_goes_up_in_parts_and_reads_back_whole(s3: Minio) -> None:
    line = json.dumps({"custom_id": "x" * 40, "pad": "y" * 1000}).encode() + b"\n"
    count = storage.PART_BYTES // len(line) + 500  # past one part: spooled to disk, multipart
    with storage.JsonlSpool(s3, BUCKET) as spool:
        for _ in range(count):
            spool.write(line)
        assert spool.size == count * len(line)
        assert spool.upload("big/one.jsonl") == count * len(line)
        assert spool.size == 0  # emptied: the same spool writes the next object
        spool.write_json({"second": True})
        spool.upload("big/two.jsonl")
    stat = storage.stat(s3, BUCKET, "big/one.jsonl")
    assert stat is not None and stat.size == count * len(line)
    assert stat.etag is not None and "-" in stat.etag  # a multipart upload's ETag
    lines = storage.read_lines(s3, BUCKET, "big/one.jsonl")
    assert sum(1 for got in lines if got == line.rstrip(b"\n")) == count
    assert list(storage.read_lines(s3, BUCKET, "big/two.jsonl")) == [b'{"second": true}']


def test_a_missing_object_is_missing_everywhere(s3: Minio) -> None:
    key = "nothing/here.jsonl"
    with pytest.raises(S3Error) as raised:
        storage.stream_object(s3, BUCKET, key)  # opened at once: raises before any chunk
    assert storage.is_missing(raised.value)
    with pytest.raises(S3Error) as raised:
        storage.read_lines(s3, BUCKET, key)
    assert storage.is_missing(raised.value)
    with pytest.raises(S3Error) as raised:
        s3.stat_object(BUCKET, key)  # a HEAD: 404 without a body
    assert storage.is_missing(raised.value)
    assert list(storage.read_lines(s3, BUCKET, key, missing_ok=True)) == []
    assert storage.read_bytes(s3, BUCKET, key) is None
    assert storage.stat(s3, BUCKET, key) is None
    assert not storage.exists(s3, BUCKET, key)
    storage.remove(s3, BUCKET, key)  # removing what is not there is no error


def test_a_missing_bucket_is_an_error_not_a_missing_object(s3: Minio) -> None:
    with pytest.raises(S3Error) as raised:
        storage.read_lines(s3, "no-such-bucket", "a.jsonl", missing_ok=True)
    assert raised.value.code == "NoSuchBucket"
    assert not storage.is_missing(raised.value)


def test_listing_finds_every_depth_under_a_prefix_in_key_order(s3: Minio) -> None:
    for key in ("tree/b.json", "tree/a/x.json", "tree/a/y.json", "treetop.json"):
        storage.put_bytes(s3, BUCKET, key, b"{}", content_type="application/json")
    found = [(item.object_name, item.size) for item in storage.list_objects(s3, BUCKET, "tree/")]
    assert found == [("tree/a/x.json", 2), ("tree/a/y.json", 2), ("tree/b.json", 2)]
    assert storage.read_bytes(s3, BUCKET, "tree/b.json") == b"{}"
    storage.remove(s3, BUCKET, "tree/b.json")
    assert not storage.exists(s3, BUCKET, "tree/b.json")


def test_metadata_travels_with_an_uploaded_stream(s3: Minio, tmp_path: Path) -> None:
    upload = tmp_path / "upload.jsonl"
    upload.write_bytes(b'{"custom_id": "a"}\n')
    with open(upload, "rb") as stream:
        storage.put_stream(s3, BUCKET, "files/meta", stream, 19, metadata={"filename": "u.jsonl"})
    stat = storage.stat(s3, BUCKET, "files/meta")
    assert stat is not None and stat.metadata is not None
    assert stat.metadata.get("x-amz-meta-filename") == "u.jsonl"


def test_a_reader_that_stops_early_gives_its_connection_back(server: S3Server) -> None:
    pool = urllib3.PoolManager(maxsize=2)
    s3 = server.client(pool)
    storage.write_jsonl(s3, BUCKET, "conn/lines.jsonl", ({"i": i} for i in range(200_000)))
    idle = free_connections(pool, server)

    chunks = storage.stream_object(s3, BUCKET, "conn/lines.jsonl", chunk_bytes=1024)
    next(chunks)
    assert free_connections(pool, server) == idle - 1  # held while the object is read
    del chunks  # dropped half-read (an HTTP client that went away)
    assert free_connections(pool, server) == idle

    unread = storage.stream_object(s3, BUCKET, "conn/lines.jsonl")
    unread.close()  # opened, never read
    assert free_connections(pool, server) == idle

    lines = storage.read_lines(s3, BUCKET, "conn/lines.jsonl")
    assert next(lines) == b'{"i": 0}'
    lines.close()  # a generator closed early (a for loop left with break, then dropped)
    assert free_connections(pool, server) == idle

    with storage.stream_object(s3, BUCKET, "conn/lines.jsonl") as whole:
        assert sum(len(chunk) for chunk in whole) > 0
    assert free_connections(pool, server) == idle
    # Read to the end without a close: released at the last chunk.
    assert sum(1 for _ in storage.read_lines(s3, BUCKET, "conn/lines.jsonl")) == 200_000
    assert free_connections(pool, server) == idle
