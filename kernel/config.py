"""The one place that reads the environment.

Every entry point (API, workers, dashboard, launcher) loads the same `Settings` from the
process environment and the project's `.env`. A bad value stops start-up with one line that
names the variable and what it expects.

`python -m kernel.config --shell` prints the settings as `export` lines for the launcher,
with the mode's defaults applied and paths made absolute.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shlex
import socket
import sys
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV_FILE = PROJECT_ROOT / ".env"
TINY_MODEL_PATH = Path("models/tiny-llama.gguf")
# The mode `make up` (scripts/up.sh) runs when DEPLOY_MODE is not in the environment.
LOCAL_RUN_MODE = "local"

Port = Annotated[int, Field(ge=1, le=65535)]
DeployMode = Literal["hybrid", "standalone", "local"]

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})$")
MIN_API_KEY_LENGTH = 16
DEFAULT_S3_CREDENTIAL = "minioadmin"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SettingsError(Exception):
    """A setting has a value that cannot be used; the message names the variable."""


def split_host_port(value: str) -> tuple[str, int]:
    match = _HOST_PORT.match(value)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"expected host:port (for example 127.0.0.1:7233), got {value!r}")
    return match["host"].strip("[]"), int(match["port"])


def model_alias(model: str) -> str:
    """The id llama-server serves LLAMA_MODEL under: a file's name without `.gguf`
    (`models/tiny-llama.gguf` -> `tiny-llama`), a Hugging Face repo without its `:quant`
    tag (`ggml-org/gemma-3-1b-it-GGUF:Q4_K_M` -> `ggml-org/gemma-3-1b-it-GGUF`)."""
    if not model:
        return "default"
    if model.endswith(".gguf") or "/" not in model.strip("/") or model.startswith((".", "/")):
        name = model.rstrip("/").rsplit("/", 1)[-1]
        return name.removesuffix(".gguf") or "default"
    return model.partition(":")[0]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=True,
        validate_default=True,
    )

    # Deploy (the deploy package reads these through load_from_file)
    DEPLOY_MODE: DeployMode = "hybrid"
    VAST_HOST: str = ""
    VAST_PORT: Port | None = None
    VAST_SSH_KEY: str = ""
    VAST_USER: str = "root"
    VAST_IMAGE: str = ""
    REMOTE_DIR: str = "/workspace"
    DEPLOY_LOCK_TIMEOUT: Annotated[int, Field(ge=0)] = 600
    DEPLOY_SSH_TIMEOUT: Annotated[int, Field(ge=1)] = 15
    HEALTH_TIMEOUT: Annotated[int, Field(ge=1)] = 300
    TUNNEL_API_PORT: Port = 18000
    TUNNEL_WEB_PORT: Port = 13000
    TUNNEL_S3_CONSOLE_PORT: Port = 19001
    TUNNEL_TEMPORAL_TARGET: str = "127.0.0.1:7233"
    TUNNEL_S3_TARGET: str = "127.0.0.1:9000"
    INSTANCE_VENV: str = "/opt/venv"
    DATA_DIR: Path = Path("data")

    # API
    API_HOST: str = "127.0.0.1"
    API_PORT: Port = 8000
    API_KEY: SecretStr | None = None

    # Temporal
    TEMPORAL_ADDRESS: str = "127.0.0.1:7233"
    TEMPORAL_NAMESPACE: str = "default"
    TEMPORAL_TLS: bool = False
    TEMPORAL_API_KEY: SecretStr | None = None
    TEMPORAL_UI_PORT: Port = 8233
    CPU_TASK_QUEUE: str = "llm-batch-cpu"
    GPU_TASK_QUEUE: str = "llm-batch-gpu"

    # S3 (MinIO or any S3 server)
    MINIO_ENDPOINT: str = "127.0.0.1:9000"
    MINIO_ACCESS_KEY: str = "minioadmin"
    MINIO_SECRET_KEY: SecretStr = SecretStr("minioadmin")
    MINIO_SECURE: bool = False
    MINIO_BUCKET: str = "llm-batch"
    MINIO_CONSOLE_PORT: Port = 9001

    # llama-server
    LLAMA_URL: str = "http://127.0.0.1:8080"
    LLAMA_SERVER_BIN: str = "llama-server"
    LLAMA_MODEL: str = ""
    # The one model id (llama-server --alias): the file's name without .gguf, or the -hf repo.
    LLAMA_MODEL_ALIAS: str = ""
    # llama-server --embeddings: one server answers chat, completions and embeddings.
    LLAMA_EMBEDDINGS: bool = True
    # --pooling for embeddings: mean for a chat model; "model" keeps the model's own.
    LLAMA_POOLING: Literal["mean", "cls", "last", "none", "rank", "model"] = "mean"
    LLAMA_PARALLEL: Annotated[int, Field(ge=1, le=256)] = 4
    LLAMA_CTX_PER_SLOT: Annotated[int, Field(ge=128)] = 2048
    LLAMA_CACHE_RAM_MIB: Annotated[int, Field(ge=-1)] = 0
    LLAMA_EXTRA_ARGS: str = ""
    LLAMA_REQUEST_TIMEOUT_SECONDS: Annotated[float, Field(gt=0)] = 600.0
    # A box whose llama-server answers nothing for this long hands its shards over (0: off).
    LLAMA_DOWN_HANDOVER_SECONDS: Annotated[float, Field(ge=0)] = 10.0

    # Workers and on-demand start
    BOX_NAME: str = ""
    WORKER_IDLE_EXIT_SECONDS: Annotated[int, Field(ge=0)] = 300
    AUTO_START_WORKERS: bool = True
    SUPERVISOR_SOCKET: Path | None = None
    RECONCILE_INTERVAL_SECONDS: Annotated[float, Field(gt=0)] = 2.0
    POLLER_LIVE_SECONDS: Annotated[float, Field(gt=0)] = 20.0
    # Prometheus endpoints of the workers' Temporal SDK metrics (0 = off).
    WORKER_CPU_METRICS_PORT: Annotated[int, Field(ge=0, le=65535)] = 0
    WORKER_GPU_METRICS_PORT: Annotated[int, Field(ge=0, le=65535)] = 0

    # Batches and single requests
    BATCH_SHARD_SIZE: Annotated[int, Field(ge=1, le=100_000)] = 500
    BATCH_WINDOW: Annotated[int, Field(ge=1, le=1_000)] = 4
    MAX_INLINE_ITEMS: Annotated[int, Field(ge=1)] = 50_000
    MAX_REQUEST_BYTES: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    PROCESS_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Cost: USD per hour of one GPU box (0 = unknown: read with the vastai CLI if present).
    GPU_PRICE_PER_HOUR: Annotated[float, Field(ge=0)] = 0.0
    # This box's own price (set by the autopilot on a box it rented; 0 = unknown). Its GPU
    # worker reports it in its box record, so batch costs use the real price of each box.
    BOX_PRICE_PER_HOUR: Annotated[float, Field(ge=0)] = 0.0

    # Autostop: a rented box releases itself after this long without batch work (0 = off).
    IDLE_RELEASE_MINUTES: Annotated[float, Field(ge=0)] = 0.0
    # stop (the disk still bills), destroy (meter off, disk gone), or auto: destroy in
    # hybrid mode, stop where the box's own S3 holds the results.
    IDLE_RELEASE_ACTION: Literal["auto", "stop", "destroy"] = "auto"

    # Disks: a data folder of this box (S3's, Temporal's, the logs) with less free than this
    # is full: /health names it, new uploads and batches are refused with 507 (0 = off).
    DISK_MIN_FREE_MB: Annotated[int, Field(ge=0)] = 256

    # Dashboard
    WEB_PORT: Port = 3000

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator(
        "TEMPORAL_ADDRESS", "MINIO_ENDPOINT", "TUNNEL_TEMPORAL_TARGET", "TUNNEL_S3_TARGET"
    )
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("API_KEY")
    @classmethod
    def _api_key_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_API_KEY_LENGTH:
            raise ValueError(
                f"must be at least {MIN_API_KEY_LENGTH} characters "
                "(make one with: openssl rand -hex 24)"
            )
        return value

    @field_validator("LLAMA_URL")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+(:\d+)?/?$", value):
            raise ValueError(f"expected http://host:port, got {value!r}")
        return value.rstrip("/")

    @field_validator("MINIO_BUCKET")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.match(value):
            raise ValueError(
                "expected an S3 bucket name: 3-63 characters of a-z, 0-9, '.' and '-', "
                f"got {value!r}"
            )
        return value

    @field_validator("CPU_TASK_QUEUE", "GPU_TASK_QUEUE", "TEMPORAL_NAMESPACE")
    @classmethod
    def _non_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _mode_defaults(self) -> Settings:
        if self.DEPLOY_MODE == "local" and not self.LLAMA_MODEL:
            self.LLAMA_MODEL = str(TINY_MODEL_PATH)
        if not self.LLAMA_MODEL_ALIAS:
            self.LLAMA_MODEL_ALIAS = model_alias(self.LLAMA_MODEL)
        if self.CPU_TASK_QUEUE == self.GPU_TASK_QUEUE:
            raise ValueError("CPU_TASK_QUEUE and GPU_TASK_QUEUE must differ")
        return self

    # Derived values -----------------------------------------------------------------

    @cached_property
    def data_dir(self) -> Path:
        return self.DATA_DIR if self.DATA_DIR.is_absolute() else PROJECT_ROOT / self.DATA_DIR

    @cached_property
    def supervisor_socket(self) -> Path:
        return self.SUPERVISOR_SOCKET or self.data_dir / "supervisor.sock"

    @cached_property
    def box_name(self) -> str:
        """The name this machine's GPU worker reports its work under (BOX_NAME or host)."""
        return self.BOX_NAME or socket.gethostname()

    @property
    def api_url(self) -> str:
        """The API as a client on this host reaches it: a wildcard bind means loopback.

        The one place the CLI, the dashboard and the deploy's health gate find the API."""
        host = self.API_HOST
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.API_PORT}"

    @property
    def runs_temporal(self) -> bool:
        return self.DEPLOY_MODE in ("standalone", "local")

    @property
    def runs_s3(self) -> bool:
        return self.DEPLOY_MODE in ("standalone", "local")

    @property
    def runs_web(self) -> bool:
        return self.DEPLOY_MODE in ("standalone", "local")

    @property
    def runs_llama(self) -> bool:
        return bool(self.LLAMA_MODEL)

    @property
    def autostart_programs(self) -> dict[str, bool]:
        """Which supervisord programs this mode starts by itself (workers start on demand)."""
        return {
            "fastapi": True,
            "worker-cpu": False,
            "worker-gpu": False,
            "llama": self.runs_llama,
            "web": self.runs_web,
            "temporal": self.runs_temporal,
            "minio": self.runs_s3,
        }

    @property
    def worker_metrics_ports(self) -> dict[str, int]:
        return {"cpu": self.WORKER_CPU_METRICS_PORT, "gpu": self.WORKER_GPU_METRICS_PORT}

    @property
    def task_queues(self) -> dict[str, str]:
        return {"cpu": self.CPU_TASK_QUEUE, "gpu": self.GPU_TASK_QUEUE}

    @property
    def gpu_urgent_task_queue(self) -> str:
        """Where single /process requests go: the GPU worker polls it with room of its own,
        so shards filling the GPU queue never hold them back."""
        return f"{self.GPU_TASK_QUEUE}-urgent"

    def check_api_binding(self) -> None:
        """The API refuses a non-loopback address without a key."""
        if not is_loopback(self.API_HOST) and self.API_KEY is None:
            raise SettingsError(
                f"API_HOST: refusing to listen on {self.API_HOST} without API_KEY; "
                "set API_KEY or bind to 127.0.0.1"
            )

    def check_service_bindings(self) -> None:
        """The Temporal and S3 servers this mode runs refuse a non-loopback address unless
        protected: S3 needs non-default credentials; Temporal's dev server has no
        authentication, so it is only exposed behind TLS (TEMPORAL_TLS=true, e.g. a
        TLS-terminating proxy in front); otherwise reach it over ./deploy_vast.sh tunnel."""
        temporal_host, _ = split_host_port(self.TEMPORAL_ADDRESS)
        if self.runs_temporal and not is_loopback(temporal_host) and not self.TEMPORAL_TLS:
            raise SettingsError(
                f"TEMPORAL_ADDRESS: refusing to run Temporal on {temporal_host} without TLS "
                "(it has no authentication); bind 127.0.0.1 and use ./deploy_vast.sh tunnel, "
                "or set TEMPORAL_TLS=true behind a TLS proxy"
            )
        s3_host, _ = split_host_port(self.MINIO_ENDPOINT)
        default_credentials = DEFAULT_S3_CREDENTIAL in (
            self.MINIO_ACCESS_KEY,
            self.MINIO_SECRET_KEY.get_secret_value(),
        )
        if self.runs_s3 and not is_loopback(s3_host) and default_credentials:
            raise SettingsError(
                f"MINIO_ENDPOINT: refusing to run S3 on {s3_host} with the default "
                f"credentials ({DEFAULT_S3_CREDENTIAL}); set MINIO_ACCESS_KEY and "
                "MINIO_SECRET_KEY or bind 127.0.0.1"
            )

    def launcher_environment(self) -> dict[str, str]:
        """Everything supervisord.conf and the program scripts read, as strings."""
        temporal_host, temporal_port = split_host_port(self.TEMPORAL_ADDRESS)
        s3_host, s3_port = split_host_port(self.MINIO_ENDPOINT)
        llama_host, _, llama_port = self.LLAMA_URL.split("://", 1)[1].partition(":")
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is None:
                value = ""
            if isinstance(value, bool):
                value = "true" if value else "false"
            env[name] = str(value)
        env.update(
            DATA_DIR=str(self.data_dir),
            LOG_DIR=str(self.data_dir / "logs"),
            SUPERVISOR_SOCKET=str(self.supervisor_socket),
            TEMPORAL_HOST=temporal_host,
            TEMPORAL_PORT=str(temporal_port),
            S3_HOST=s3_host,
            S3_PORT=str(s3_port),
            LLAMA_HOST=llama_host,
            LLAMA_PORT=llama_port or "80",
        )
        for program, enabled in self.autostart_programs.items():
            env[f"AUTOSTART_{program.upper().replace('-', '_')}"] = "true" if enabled else "false"
        env["AUTOSTART_AUTOSTOP"] = "true" if self.IDLE_RELEASE_MINUTES > 0 else "false"
        return env


class _FileSettings(Settings):
    """Settings from the init arguments and the env file only: the process environment is
    not read (see load_from_file)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, dotenv_settings)


def load_from_file(env_file: str | os.PathLike[str], environment: Iterable[str] = ()) -> Settings:
    """The settings of one env file, where only the variables named in `environment` may
    come from the process environment (which then wins, empty counting as unset).

    For the deploy: the file describes another machine (the instance), so this shell's
    INSTANCE_VENV or API_KEY must not leak into it. Raises pydantic's ValidationError, so the
    caller can word each problem for its own users (`describe_error` words it as start-up
    does)."""
    overrides: dict[str, Any] = {
        name: os.environ[name] for name in environment if os.environ.get(name)
    }
    return _FileSettings(_env_file=str(env_file), **overrides)


def describe_error(error: Mapping[str, Any]) -> str:
    """One validation error as `NAME: what is wrong[, got VALUE]`; never a secret's value."""
    return _describe(dict(error))


def _describe(error: dict[str, Any]) -> str:
    loc = error.get("loc") or ()
    name = str(loc[0]) if loc else "settings"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    secret = "KEY" in name or "SECRET" in name
    given = error.get("input")
    if secret or given is None or isinstance(given, dict) or f"{given!r}" in message:
        return f"{name}: {message}"
    return f"{name}: {message}, got {given!r}"


def load_settings(env_file: str | os.PathLike[str] | None = None) -> Settings:
    """Loads and validates the settings; raises SettingsError naming the variable."""
    path = env_file or os.environ.get("ENV_FILE") or DEFAULT_ENV_FILE
    if env_file is not None and not Path(path).is_file():
        raise SettingsError(f"ENV_FILE: {path} does not exist")
    try:
        return Settings(_env_file=str(path))
    except ValidationError as exc:
        raise SettingsError(_describe(dict(exc.errors()[0]))) from None


def load_settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"error: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _load_lenient(env_file: str | None) -> tuple[Settings, list[str]]:
    """The settings with each invalid value replaced by its default, and what was replaced.

    For the commands that only stop or inspect the stack: they need DATA_DIR and the
    socket, and must work whatever else `.env` says.
    """
    path = env_file or os.environ.get("ENV_FILE") or str(DEFAULT_ENV_FILE)
    if env_file is not None and not Path(path).is_file():
        raise SettingsError(f"ENV_FILE: {path} does not exist")
    fields = Settings.model_fields
    defaults: dict[str, Any] = {}
    problems: list[str] = []
    for _ in range(len(fields) + 1):
        try:
            return Settings(_env_file=path, **defaults), problems
        except ValidationError as exc:
            for error in exc.errors():
                loc = error.get("loc") or ()
                name = str(loc[0]) if loc else ""
                if name not in fields or name in defaults:
                    raise SettingsError(_describe(dict(error))) from None
                defaults[name] = fields[name].default
                problems.append(_describe(dict(error)))
    raise SettingsError("settings: could not fall back to the defaults")


def local_run_settings(settings: Settings, env_file: str) -> Settings:
    """The settings `make up` starts with: scripts/up.sh runs LOCAL_RUN_MODE unless
    DEPLOY_MODE is set in the environment, because the DEPLOY_MODE in `.env` is the
    instance's (the deploy's). `settings` are those loaded from the same file."""
    if os.environ.get("DEPLOY_MODE") or settings.DEPLOY_MODE == LOCAL_RUN_MODE:
        return settings
    return Settings(_env_file=env_file, DEPLOY_MODE=LOCAL_RUN_MODE)


def mode_line(settings: Settings) -> str:
    """`MODE (starts PROGRAMS; workers on demand)`: what this mode runs."""
    programs = [name for name, on in settings.autostart_programs.items() if on]
    return f"{settings.DEPLOY_MODE} (starts {', '.join(programs)}; workers on demand)"


def _summary(settings: Settings, path: str) -> str:
    """The summary of `python -m kernel.config`: the mode and model `make up` runs with,
    and the instance's mode when the file names another one (`./deploy_vast.sh check`
    prints the deploy's whole view)."""
    local = local_run_settings(settings, path)
    key = "set" if local.API_KEY is not None else "none (loopback only)"
    lines = [
        f"settings ok: {path}"
        + ("" if Path(path).is_file() else " (no such file: the environment and the defaults)"),
        f"  mode       {mode_line(local)}" + ("" if local is settings else " for make up"),
    ]
    if local is not settings:
        lines.append(
            f"  deploy     {settings.DEPLOY_MODE} on the instance (DEPLOY_MODE in the file), "
            f"model {settings.LLAMA_MODEL or '(none)'}: ./deploy_vast.sh check"
        )
    lines += [
        f"  API        http://{local.API_HOST}:{local.API_PORT}  API_KEY {key}",
        f"  Temporal   {local.TEMPORAL_ADDRESS}  namespace {local.TEMPORAL_NAMESPACE}"
        f"  queues {local.CPU_TASK_QUEUE}, {local.GPU_TASK_QUEUE}",
        f"  S3         {local.MINIO_ENDPOINT}  bucket {local.MINIO_BUCKET}",
        f"  llama      {local.LLAMA_URL}  model {local.LLAMA_MODEL or '(none)'}"
        f"  slots {local.LLAMA_PARALLEL}",
        f"  data       {local.data_dir}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check the project's settings and print a summary (exit 2 naming the "
        "first bad variable), or print them as `export` lines for the launcher."
    )
    parser.add_argument("--env-file", help="read this file instead of the project's .env")
    parser.add_argument(
        "--shell", action="store_true", help="print `export` lines for the launcher"
    )
    parser.add_argument(
        "--check-api",
        action="store_true",
        help="also check the API, Temporal and S3 bindings",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="with --shell: warn about a bad value and use its default instead of failing "
        "(for stopping and inspecting the stack)",
    )
    args = parser.parse_args(argv)
    path = args.env_file or os.environ.get("ENV_FILE") or str(DEFAULT_ENV_FILE)
    if args.env_file is not None and not Path(args.env_file).is_file():
        print(
            f"error: --env-file: no file at {args.env_file}; create it (cp .env.example .env) "
            "or leave --env-file out to check the environment and the defaults",
            file=sys.stderr,
        )
        return 2
    try:
        if args.shell and args.lenient:
            settings, problems = _load_lenient(args.env_file)
            for problem in problems:
                print(
                    f"warning: invalid setting {problem}; using its default here "
                    f"(fix {path}, then check it with `python -m kernel.config`)",
                    file=sys.stderr,
                )
        else:
            settings = load_settings(args.env_file)
        if args.check_api or not args.shell:
            settings.check_api_binding()
            settings.check_service_bindings()
    except SettingsError as exc:
        print(f"error: invalid setting {exc}", file=sys.stderr)
        return 2
    if args.shell:
        for name, value in sorted(settings.launcher_environment().items()):
            print(f"export {name}={shlex.quote(value)}")
    else:
        print(_summary(settings, path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
