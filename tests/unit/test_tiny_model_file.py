"""scripts/make_tiny_model.py writes a small, deterministic llama GGUF that reads back."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "make_tiny_model.py"


def make_model(output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(output), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def field(reader: gguf.GGUFReader, key: str) -> Any:
    assert key in reader.fields, f"missing metadata key {key}"
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.gguf"
    result = make_model(path)
    assert result.stdout.strip() == str(path)
    return path


def test_metadata_describes_a_two_layer_chatml_llama(model_path: Path) -> None:
    reader = gguf.GGUFReader(model_path)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == 2
    assert field(reader, "llama.embedding_length") == 64
    assert field(reader, "llama.attention.head_count") == 4
    assert field(reader, "llama.context_length") >= 2048

    tokens = field(reader, "tokenizer.ggml.tokens")
    assert field(reader, "llama.vocab_size") == len(tokens)
    assert len(field(reader, "tokenizer.ggml.token_type")) == len(tokens)
    assert len(tokens) == len(set(tokens))
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.ggml.merges")
    # Byte-level BPE: every byte has a token, spelled with GPT-2's byte-to-unicode table.
    assert set(gguf.bytes_to_unicode().values()) <= set(tokens)

    assert tokens[field(reader, "tokenizer.ggml.bos_token_id")] == "<|endoftext|>"
    assert tokens[field(reader, "tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert "<|im_start|>" in tokens

    template = field(reader, "tokenizer.chat_template")
    assert "<|im_start|>" in template
    assert "<|im_end|>" in template
    assert "add_generation_prompt" in template


def test_tensors_are_small_float32_llama_weights(model_path: Path) -> None:
    reader = gguf.GGUFReader(model_path)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    n_vocab = len(field(reader, "tokenizer.ggml.tokens"))
    assert tensors["token_embd.weight"].data.shape == (n_vocab, 64)
    assert tensors["output.weight"].data.shape == (n_vocab, 64)
    assert tensors["blk.1.ffn_down.weight"].data.shape[0] == 64
    assert "blk.2.attn_q.weight" not in tensors
    assert {tensor.tensor_type for tensor in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    assert model_path.stat().st_size < 5 * 1024 * 1024


def test_same_seed_same_bytes_and_existing_file_is_kept(tmp_path: Path, model_path: Path) -> None:
    path = tmp_path / "models" / "tiny.gguf"  # the parent folder is created as needed
    make_model(path)
    assert path.read_bytes() == model_path.read_bytes()

    before = path.stat()
    make_model(path)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    make_model(path, "--force")
    assert path.stat().st_ino != before.st_ino
    assert path.read_bytes() == model_path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"]  # no temporary left over


def test_other_seed_rewrites_the_file(tmp_path: Path, model_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(model_path.read_bytes())
    make_model(path, "--seed", "7")
    assert path.read_bytes() != model_path.read_bytes()
    assert field(gguf.GGUFReader(path), "tiny_model.seed") == 7


def test_invalid_file_is_replaced(tmp_path: Path, model_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"not a model")
    make_model(path)
    assert path.read_bytes() == model_path.read_bytes()
