#!/usr/bin/env python3
r"""Generate a tiny random-weight llama GGUF for local development and tests.

The model is a real llama architecture (2 layers, 64 embedding dims, grouped-query
attention, SwiGLU feed-forward) with a GPT-2 style byte-level BPE vocabulary and a ChatML
chat template, so llama-server loads it like any other model: slots, tokenizer, chat
templating, sampling, grammars / json_schema and metrics all behave for real. Its weights are
random, so the text it writes is gibberish.

Properties worth knowing when writing tests against it:

* The file is a pure function of the seed: the same seed gives the same bytes.
* Generated text is printable ASCII: one hidden channel carries a constant that the output
  layer turns into a per-token bias. Printable tokens get a large positive bias; bare
  whitespace tokens (" ", "\n") none, so they are rare and JSON produced under a grammar stays
  compact (spaces still appear through the merged " t", " the", ... tokens); everything else
  (control bytes, bytes >= 0x80, special tokens) a large negative one.
* The model therefore never emits an end-of-generation token by itself: a completion runs
  until ``max_tokens``, a stop string, a finished grammar, or the end of the slot's context.

Usage: python scripts/make_tiny_model.py [--output PATH] [--seed N] [--force]

Prints the model's path on stdout; logs go to stderr. An existing file made from the same
recipe and seed is kept unless --force is given.
"""

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

log = logging.getLogger("make_tiny_model")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "models" / "tiny-llama.gguf"
DEFAULT_SEED = 0

# Bump when anything below changes the file's contents, so stale files get regenerated.
RECIPE_VERSION = 2
KEY_RECIPE_VERSION = "tiny_model.recipe_version"
KEY_SEED = "tiny_model.seed"

ARCH = "llama"
N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = N_EMBD // N_HEAD
N_FF = 256
CONTEXT_LENGTH = 4096
ROPE_FREQ_BASE = 10000.0
RMS_NORM_EPS = 1e-5

# Hidden channel 0 holds this constant in every position (no layer writes to it); the output
# layer multiplies it by OUTPUT_BIAS times the token's class (+1, 0 or -1, see build_vocab).
BIAS_CHANNEL_VALUE = 4.0
OUTPUT_BIAS = 4.0
OUTPUT_STD = 0.3

TOKEN_ENDOFTEXT = "<|endoftext|>"
TOKEN_IM_START = "<|im_start|>"
TOKEN_IM_END = "<|im_end|>"
SPECIAL_TOKENS = (TOKEN_ENDOFTEXT, TOKEN_IM_START, TOKEN_IM_END)

# A few of GPT-2's first merges, in rank order (byte-level text: "Ġ" is a space).
MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "t"), ("Ġ", "a"), ("h", "e"), ("i", "n"), ("r", "e"), ("o", "n"),
    ("Ġt", "he"), ("e", "r"), ("Ġ", "s"), ("a", "t"), ("Ġ", "w"), ("Ġ", "o"),
    ("e", "n"), ("Ġ", "c"), ("i", "t"), ("i", "s"), ("a", "n"), ("o", "r"),
    ("e", "s"), ("Ġ", "b"), ("e", "d"), ("Ġ", "f"), ("in", "g"), ("Ġ", "p"),
    ("o", "u"), ("Ġa", "n"), ("a", "l"), ("a", "r"), ("Ġt", "o"), ("Ġ", "m"),
    ("Ġo", "f"), ("Ġ", "in"), ("Ġ", "d"), ("Ġ", "h"), ("Ġan", "d"), ("i", "c"),
    ("a", "s"), ("l", "e"), ("Ġt", "h"), ("Ġ", "re"),
)  # fmt: skip

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

FloatArray = npt.NDArray[np.float32]


def byte_class(byte: int) -> int:
    """Output bias class of a single-byte token: +1 printable, 0 bare whitespace, -1 other."""
    if byte in (0x20, 0x0A):
        return 0
    return 1 if 0x21 <= byte <= 0x7E else -1


def build_vocab() -> tuple[list[str], list[int], list[str], list[int]]:
    """Return tokens, token types, merges and each token's output bias class."""
    byte_encoder = gguf.bytes_to_unicode()
    byte_decoder = {char: byte for byte, char in byte_encoder.items()}
    tokens = [byte_encoder[byte] for byte in range(256)]
    bias_class = [byte_class(byte) for byte in range(256)]
    for first, second in MERGES:
        merged = first + second
        if first not in tokens or second not in tokens or merged in tokens:
            raise ValueError(f"merge {first!r} + {second!r} does not extend the vocabulary")
        tokens.append(merged)
        printable = all(0x20 <= byte_decoder[char] <= 0x7E for char in merged)
        bias_class.append(1 if printable else -1)
    token_types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    tokens.extend(SPECIAL_TOKENS)
    token_types.extend([int(gguf.TokenType.CONTROL)] * len(SPECIAL_TOKENS))
    bias_class.extend([-1] * len(SPECIAL_TOKENS))
    merges = [f"{first} {second}" for first, second in MERGES]
    return tokens, token_types, merges, bias_class


def build_tensors(seed: int, bias_class: Sequence[int]) -> dict[str, FloatArray]:
    """Random weights, shaped as numpy (rows = output features) the way gguf stores them."""
    rng = np.random.default_rng(seed)
    n_vocab = len(bias_class)
    n_kv = N_HEAD_KV * HEAD_DIM

    def normal(shape: tuple[int, ...], std: float) -> FloatArray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def name(tensor: gguf.MODEL_TENSOR, layer: int | None = None) -> str:
        base = gguf.TENSOR_NAMES[tensor]
        return (base.format(bid=layer) if layer is not None else base) + ".weight"

    tensors: dict[str, FloatArray] = {}
    token_embd = normal((n_vocab, N_EMBD), 1.0)
    token_embd[:, 0] = BIAS_CHANNEL_VALUE
    tensors[name(gguf.MODEL_TENSOR.TOKEN_EMBD)] = token_embd

    in_std = 1.0 / np.sqrt(N_EMBD)
    for layer in range(N_LAYER):
        tensors[name(gguf.MODEL_TENSOR.ATTN_NORM, layer)] = np.ones(N_EMBD, dtype=np.float32)
        tensors[name(gguf.MODEL_TENSOR.ATTN_Q, layer)] = normal((N_HEAD * HEAD_DIM, N_EMBD), in_std)
        tensors[name(gguf.MODEL_TENSOR.ATTN_K, layer)] = normal((n_kv, N_EMBD), in_std)
        tensors[name(gguf.MODEL_TENSOR.ATTN_V, layer)] = normal((n_kv, N_EMBD), in_std)
        attn_out = normal((N_EMBD, N_HEAD * HEAD_DIM), in_std)
        attn_out[0, :] = 0.0  # keep the bias channel constant
        tensors[name(gguf.MODEL_TENSOR.ATTN_OUT, layer)] = attn_out
        tensors[name(gguf.MODEL_TENSOR.FFN_NORM, layer)] = np.ones(N_EMBD, dtype=np.float32)
        tensors[name(gguf.MODEL_TENSOR.FFN_GATE, layer)] = normal((N_FF, N_EMBD), in_std)
        tensors[name(gguf.MODEL_TENSOR.FFN_UP, layer)] = normal((N_FF, N_EMBD), in_std)
        ffn_down = normal((N_EMBD, N_FF), 1.0 / np.sqrt(N_FF))
        ffn_down[0, :] = 0.0  # keep the bias channel constant
        tensors[name(gguf.MODEL_TENSOR.FFN_DOWN, layer)] = ffn_down

    tensors[name(gguf.MODEL_TENSOR.OUTPUT_NORM)] = np.ones(N_EMBD, dtype=np.float32)
    output = normal((n_vocab, N_EMBD), OUTPUT_STD)
    output[:, 0] = OUTPUT_BIAS * np.asarray(bias_class, dtype=np.float32)
    tensors[name(gguf.MODEL_TENSOR.OUTPUT)] = output
    return tensors


def write_model(path: Path, seed: int) -> None:
    """Write the model to ``path`` (not atomically; see ``make_model``)."""
    tokens, token_types, merges, bias_class = build_vocab()
    special_id = {token: tokens.index(token) for token in SPECIAL_TOKENS}

    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name("tiny-llama")
    writer.add_description(f"random-weight llama for development and tests (seed {seed})")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_uint32(KEY_RECIPE_VERSION, RECIPE_VERSION)
    writer.add_uint64(KEY_SEED, seed)

    writer.add_vocab_size(len(tokens))
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_NORM_EPS)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(special_id[TOKEN_ENDOFTEXT])
    writer.add_eos_token_id(special_id[TOKEN_IM_END])
    writer.add_eot_token_id(special_id[TOKEN_IM_END])
    writer.add_pad_token_id(special_id[TOKEN_ENDOFTEXT])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    for tensor_name, data in build_tensors(seed, bias_class).items():
        writer.add_tensor(tensor_name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def is_current(path: Path, seed: int) -> bool:
    """True when ``path`` is a readable GGUF made by this recipe with this seed."""
    if not path.is_file():
        return False
    try:
        reader = gguf.GGUFReader(path)
        fields = reader.fields
        return (
            fields["general.architecture"].contents() == ARCH
            and fields[KEY_RECIPE_VERSION].contents() == RECIPE_VERSION
            and fields[KEY_SEED].contents() == seed
            and len(reader.tensors) == 3 + 9 * N_LAYER
        )
    except Exception as exc:  # any parse failure means "not a usable model file"
        log.info("existing %s is not usable (%s: %s)", path, type(exc).__name__, exc)
        return False


def make_model(output: Path, seed: int = DEFAULT_SEED, force: bool = False) -> bool:
    """Create the model at ``output`` unless an up-to-date one is there; True if written.

    The file is written next to ``output`` under a temporary name and renamed into place, so
    readers never see a partial model.
    """
    if not force and is_current(output, seed):
        log.info("%s is up to date (seed %d); use --force to rewrite it", output, seed)
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_model(tmp, seed)
        tmp.chmod(0o644)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s (%d bytes, seed %d)", output, output.stat().st_size, seed)
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate a tiny random-weight llama GGUF (ChatML, byte-level BPE) "
        "for local development and tests.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the model (default: models/tiny-llama.gguf in the repository)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--force", action="store_true", help="rewrite the file even if it is up to date"
    )
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="[make-tiny-model] %(levelname)s %(message)s"
    )
    logging.getLogger("gguf").setLevel(logging.WARNING)
    output = args.output.expanduser().resolve()
    try:
        make_model(output, seed=args.seed, force=args.force)
    except OSError as exc:
        log.error("cannot write %s: %s", output, exc)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
