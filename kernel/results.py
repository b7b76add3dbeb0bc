"""Reading a batch's finished results: the invalid input lines, then each shard's result
object in shard order. The API streams them while a batch runs; the merge activity writes
them into the output and error files. One reader serves both.

A shard's result is the object of its latest attempt (see `result_key`): one listing of the
batch's results finds them. Every object of a shard holds distinct request lines of that
shard (a finished attempt all of them, a shard handed over or cancelled those answered so
far), so whichever one is read, each custom_id comes once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from minio import Minio
from minio.error import S3Error

from kernel.jsonl import iter_result_lines
from kernel.keys import invalid_lines_key, latest_results, results_prefix

READ_CHUNK_BYTES = 1 << 20
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound")


def is_success(line: bytes) -> bool:
    """An output line answered without error (as opposed to an error-file line)."""
    return json.loads(line).get("error") is None


class ShardResults:
    """The result lines of one batch, read from the bucket as they are stored."""

    def __init__(self, s3: Minio, bucket: str, batch_id: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.batch_id = batch_id

    def _object_lines(self, key: str) -> Iterator[bytes]:
        """The lines of one object; nothing when it does not exist (yet)."""
        try:
            response = self.s3.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return
            raise
        try:
            yield from iter_result_lines(response.stream(READ_CHUNK_BYTES))
        finally:
            response.close()
            response.release_conn()

    def lines(
        self, shard_count: int, on_shard: Callable[[int], None] | None = None
    ) -> Iterator[tuple[bool, bytes]]:
        """(is_success, line) for the invalid input lines, then every finished shard's
        lines in shard order; shards without a result object yet are skipped."""
        for line in self._object_lines(invalid_lines_key(self.batch_id)):
            yield False, line
        keys = self.result_keys() if shard_count else {}
        for shard in range(shard_count):
            if shard in keys:
                for line in self._object_lines(keys[shard]):
                    yield is_success(line), line
            if on_shard is not None:
                on_shard(shard)

    def result_keys(self) -> dict[int, str]:
        """Shard → key of its latest attempt's result object, for the shards that have one."""
        listing = self.s3.list_objects(
            self.bucket, prefix=results_prefix(self.batch_id), recursive=True
        )
        names = (item.object_name or "" for item in listing)
        return {shard: key for shard, (_, key) in latest_results(self.batch_id, names).items()}
