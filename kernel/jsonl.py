"""Streaming JSONL helpers shared by the activities and the API."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class TooLong:
    """Stands for a line longer than the limit (its bytes are dropped, not kept)."""

    def __init__(self, size: int) -> None:
        self.size = size


def iter_lines(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes | TooLong]:
    """Splits a byte stream into lines; a line over max_bytes yields TooLong, not the bytes."""
    carry = bytearray()
    overflow = 0
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                piece = chunk[start:]
                if overflow or len(carry) + len(piece) > max_bytes:
                    overflow += len(carry) + len(piece)
                    carry.clear()
                else:
                    carry += piece
                break
            piece = chunk[start:end]
            if overflow:
                yield TooLong(overflow + len(piece))
                overflow = 0
            elif carry:
                carry += piece
                yield TooLong(len(carry)) if len(carry) > max_bytes else bytes(carry)
                carry.clear()
            else:
                yield TooLong(len(piece)) if len(piece) > max_bytes else piece
            start = end + 1
    if overflow:
        yield TooLong(overflow)
    elif carry:
        yield bytes(carry)


def iter_result_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Non-blank lines of a result object (written by this project, so never too long)."""
    for line in iter_lines(chunks, max_bytes=1 << 62):
        if isinstance(line, bytes) and line.strip():
            yield line
