"""`llm-batch` usage errors and a refused `.env` value: one line each, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli.main as main
from cli.client import SettingsInvalid, resolve
from kernel.config import Settings


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("LLM_BATCH_URL", "LLM_BATCH_API_KEY", "ENV_FILE", *Settings.model_fields):
        monkeypatch.delenv(name, raising=False)


def run(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["llm-batch", *args])
    with pytest.raises(SystemExit) as exited:
        main.run()
    return int(exited.value.code or 0)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--frob"], "llm-batch: error: No such option: --frob; see llm-batch --help"),
        (["nosuch"], "llm-batch: error: No such command 'nosuch'; see llm-batch --help"),
        (
            ["--url", "http://api.test", "status"],
            "llm-batch: error: Missing argument 'ID'; see llm-batch status --help",
        ),
        (
            ["--url", "http://api.test", "status", "a", "b"],
            "llm-batch: error: Got unexpected extra argument(s) (b); see llm-batch status --help",
        ),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    line: str,
) -> None:
    assert run(monkeypatch, *args) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert captured.out == ""


def test_help_and_no_arguments_still_print_the_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "--help") == 0
    assert "Usage:" in capsys.readouterr().out
    assert run(monkeypatch) == 2  # no command: the help, as click's no_args_is_help does
    assert "Usage:" in capsys.readouterr().out


def test_the_test_runner_sees_the_same_line() -> None:
    result = CliRunner().invoke(main.app, ["--frob"])
    assert result.exit_code == 2
    assert result.stderr == "llm-batch: error: No such option: --frob; see llm-batch --help\n"


def test_a_bad_env_value_is_refused_not_replaced_by_a_default_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text("API_PORT=80x0\n")
    with pytest.raises(SettingsInvalid, match="^invalid setting API_PORT: "):
        resolve(None, None)
    assert run(monkeypatch, "health") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid setting API_PORT: ") and "'80x0'" in err
    assert err.count("\n") == 1
    # With the address given, the bad file is not needed for it.
    assert resolve("http://flag:1", None).url == "http://flag:1"
    monkeypatch.setenv("LLM_BATCH_URL", "http://env:2")
    assert resolve(None, None).url == "http://env:2"
