"""File ids of the OpenAI-compatible Files API and the objects they name (kernel.keys)."""

from __future__ import annotations

import pytest

from kernel.keys import (
    batch_file_id,
    errors_key,
    file_id_for_key,
    file_key,
    file_key_for_id,
    input_key,
    new_file_id,
    output_key,
    shard_key,
    summary_key,
)

BATCH = "batch_" + "0123456789abcdef" * 2


def test_every_file_id_names_its_object_and_back() -> None:
    uploaded = new_file_id()
    cases = [
        (uploaded, file_key(uploaded), None),
        (batch_file_id(BATCH, "input"), input_key(BATCH), "input"),
        (batch_file_id(BATCH, "output"), output_key(BATCH), "output"),
        (batch_file_id(BATCH, "errors"), errors_key(BATCH), "errors"),
    ]
    for file_id, key, kind in cases:
        assert file_key_for_id(file_id) == (key, kind)
        assert file_id_for_key(key) == file_id


@pytest.mark.parametrize(
    "file_id",
    [
        "file-" + "0" * 31,  # not a made id
        "file-" + "A" * 32,
        f"file-{BATCH}-summary",  # a batch object that is not a file
        f"file-{BATCH}-../input",
        "file-batch_../x-output",
        f"{BATCH}-output",
        "file-batch_unit-output",
    ],
)
def test_an_id_the_api_did_not_make_names_no_object(file_id: str) -> None:
    assert file_key_for_id(file_id) is None


@pytest.mark.parametrize(
    "key",
    [
        shard_key(BATCH, 0),
        summary_key(BATCH),
        f"batches/{BATCH}/sub/output.jsonl",
        "batches/batch_unit/output.jsonl",
        f"{BATCH}/output.jsonl",
        "files/notes.txt",
        "files/",
    ],
)
def test_an_object_that_is_no_file_has_no_file_id(key: str) -> None:
    assert file_id_for_key(key) is None
