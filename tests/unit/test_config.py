from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernel.config import PROJECT_ROOT, Settings, SettingsError, load_settings, main


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    return tmp_path / "test.env"


def load(env_file: Path, monkeypatch: pytest.MonkeyPatch, **values: str) -> Settings:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return load_settings(env_file)


def test_defaults_and_local_mode_defaults(env_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(env_file, monkeypatch)
    assert settings.DEPLOY_MODE == "hybrid"
    assert settings.autostart_programs == {
        "fastapi": True,
        "worker-cpu": False,
        "worker-gpu": False,
        "llama": False,
        "web": False,
        "temporal": False,
        "minio": False,
    }
    local = load(env_file, monkeypatch, DEPLOY_MODE="local")
    assert local.LLAMA_MODEL == "models/tiny-llama.gguf"
    assert all(local.autostart_programs[p] for p in ("llama", "web", "temporal", "minio"))
    assert local.supervisor_socket == PROJECT_ROOT / "data" / "supervisor.sock"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("API_PORT", "abc", "API_PORT: Input should be a valid integer"),
        ("API_PORT", "70000", "API_PORT: Input should be less than or equal to 65535"),
        ("DEPLOY_MODE", "cloud", "DEPLOY_MODE: Input should be 'hybrid', 'standalone' or 'local'"),
        ("TEMPORAL_ADDRESS", "temporal", "TEMPORAL_ADDRESS: expected host:port"),
        ("MINIO_ENDPOINT", "http://x:9000", "MINIO_ENDPOINT: expected host:port"),
        ("MINIO_BUCKET", "A", "MINIO_BUCKET: expected an S3 bucket name"),
        ("LLAMA_URL", "localhost:8080", "LLAMA_URL: expected http://host:port"),
        ("TEMPORAL_TLS", "maybe", "TEMPORAL_TLS: Input should be a valid boolean"),
        ("LLAMA_PARALLEL", "0", "LLAMA_PARALLEL: Input should be greater than or equal to 1"),
    ],
)
def test_bad_values_name_the_variable(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as error:
        load(env_file, monkeypatch, **{name: value})
    assert str(error.value).startswith(expected), str(error.value)
    assert "\n" not in str(error.value)


def test_secrets_are_never_echoed(env_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        env_file, monkeypatch, API_KEY="s3cr3t-value-0123456", MINIO_SECRET_KEY="m1n10-key"
    )
    assert "s3cr3t-value-0123456" not in repr(settings) and "m1n10-key" not in repr(settings)
    assert settings.launcher_environment()["API_KEY"] == "s3cr3t-value-0123456"


def test_public_api_needs_a_key(env_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="API_HOST: refusing to listen on 0.0.0.0"):
        load(env_file, monkeypatch, API_HOST="0.0.0.0").check_api_binding()
    load(env_file, monkeypatch, API_HOST="0.0.0.0", API_KEY="k" * 16).check_api_binding()
    load(env_file, monkeypatch, API_HOST="127.0.0.1").check_api_binding()


def test_shell_export_quotes_values(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    load(env_file, monkeypatch)
    env_file.write_text("LLAMA_EXTRA_ARGS=\"-ngl 99 --alias 'it''s' $HOME\"\n")
    assert main(["--env-file", str(env_file), "--shell"]) == 0
    out = capsys.readouterr().out
    assert "export AUTOSTART_FASTAPI=true" in out
    line = next(x for x in out.splitlines() if x.startswith("export LLAMA_EXTRA_ARGS="))
    assert line == "export LLAMA_EXTRA_ARGS='-ngl 99 --alias '\"'\"'it'\"'\"''\"'\"'s'\"'\"' $HOME'"


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = (PROJECT_ROOT / ".env.example").read_text()
    listed = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.M))
    assert set(listed) == set(Settings.model_fields)
    defaults = Settings.model_construct()
    for name, value in listed.items():
        default = getattr(defaults, name)
        if hasattr(default, "get_secret_value"):
            default = default.get_secret_value()
        if isinstance(default, bool):
            default = str(default).lower()
        if default is None:
            default = ""
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        assert value == str(default), f"{name}: .env.example says {value!r}, default {default!r}"


def test_docs_document_every_setting() -> None:
    readme = (PROJECT_ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", readme, flags=re.M))
    assert set(Settings.model_fields) <= documented, set(Settings.model_fields) - documented


def test_check_prints_a_summary(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    load(env_file, monkeypatch, DEPLOY_MODE="local", API_PORT="8123", API_KEY="k" * 16)
    assert main(["--env-file", str(env_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"settings ok: {env_file}\n")
    assert "mode       local" in out and "http://127.0.0.1:8123  API_KEY set" in out
    assert "k" * 16 not in out


def test_check_refuses_a_public_api_without_a_key(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    load(env_file, monkeypatch, API_HOST="0.0.0.0")
    assert main(["--env-file", str(env_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: invalid setting API_HOST: refusing to listen on 0.0.0.0")
    load(env_file, monkeypatch, API_HOST="0.0.0.0", API_KEY="k" * 16)
    assert main(["--env-file", str(env_file)]) == 0


def test_check_names_a_bad_value(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    load(env_file, monkeypatch)
    env_file.write_text("API_PORT=eighty\n")
    assert main(["--env-file", str(env_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid setting API_PORT: Input should be a valid integer")
    assert "'eighty'" in err


def test_lenient_shell_falls_back_to_defaults_with_a_warning(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    load(env_file, monkeypatch)
    env_file.write_text("API_PORT=eighty\nLOG_LEVEL=LOUD\nDATA_DIR=/srv/llm\n")
    assert main(["--env-file", str(env_file), "--shell"]) == 2
    capsys.readouterr()
    assert main(["--env-file", str(env_file), "--shell", "--lenient"]) == 0
    captured = capsys.readouterr()
    exports = dict(line.removeprefix("export ").split("=", 1) for line in captured.out.splitlines())
    assert exports["API_PORT"] == "8000" and exports["LOG_LEVEL"] == "INFO"
    # What stopping and inspecting need is kept from the file.
    assert exports["DATA_DIR"] == "/srv/llm"
    assert exports["SUPERVISOR_SOCKET"] == "/srv/llm/supervisor.sock"
    warnings = captured.err.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: invalid setting API_PORT:")
    assert all("using its default" in w and str(env_file) in w for w in warnings)


def test_app_core_config_still_checks_a_file(env_file: Path) -> None:
    env_file.write_text("DEPLOY_MODE=local\n")
    result = subprocess.run(
        [sys.executable, "-m", "app.core.config", "--env-file", str(env_file)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in Settings.model_fields},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("settings ok:")


def test_a_short_api_key_stops_start_up(env_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="API_KEY: must be at least 16 characters") as error:
        load(env_file, monkeypatch, API_KEY="short-key")
    assert "short-key" not in str(error.value)
    assert load(env_file, monkeypatch, API_KEY="x" * 16).API_KEY is not None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"TEMPORAL_ADDRESS": "0.0.0.0:7233"},
            "TEMPORAL_ADDRESS: refusing to run Temporal on 0.0.0.0 without TLS",
        ),
        (
            {"MINIO_ENDPOINT": "10.0.0.5:9000"},
            "MINIO_ENDPOINT: refusing to run S3 on 10.0.0.5 with the default credentials",
        ),
        (
            {"MINIO_ENDPOINT": "0.0.0.0:9000", "MINIO_ACCESS_KEY": "user-1"},
            "MINIO_ENDPOINT: refusing to run S3 on 0.0.0.0 with the default credentials",
        ),
    ],
)
def test_local_temporal_and_s3_refuse_public_addresses_unprotected(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, str], expected: str
) -> None:
    settings = load(env_file, monkeypatch, DEPLOY_MODE="standalone", **values)
    with pytest.raises(SettingsError, match=expected) as error:
        settings.check_service_bindings()
    assert "\n" not in str(error.value)
    # A protected server, or one this mode does not run, is fine.
    protected = {
        **values,
        "TEMPORAL_TLS": "true",
        "MINIO_ACCESS_KEY": "batch-user",
        "MINIO_SECRET_KEY": "a-long-secret-value",
    }
    load(env_file, monkeypatch, DEPLOY_MODE="standalone", **protected).check_service_bindings()
    load(env_file, monkeypatch, DEPLOY_MODE="hybrid", **values).check_service_bindings()
    assert main(["--env-file", str(env_file), "--check-api"]) == 0
    env_file.write_text(
        "DEPLOY_MODE=standalone\n" + "".join(f"{k}={v}\n" for k, v in values.items())
    )
    assert main(["--env-file", str(env_file), "--check-api"]) == 2


def test_check_of_a_missing_file_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    missing = tmp_path / ".env"
    assert main(["--env-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --env-file: no file at {missing}; create it (cp .env.example .env) or leave "
        "--env-file out to check the environment and the defaults\n"
    )
    monkeypatch.setenv("ENV_FILE", str(missing))
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"settings ok: {missing} (no such file: the environment and the defaults)\n"
    )
