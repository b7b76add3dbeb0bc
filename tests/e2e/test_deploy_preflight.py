"""./deploy_vast.sh refuses to start with a one-line reason, and leaves the instance untouched.

No stack boots here: every case fails before anything is written on the instance, except the
tunnel test, which needs only sshd.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.stack import free_port
from tests.e2e.conftest import Deployer, DeployResult, port_is_open, wait_for

pytestmark = pytest.mark.e2e


def assert_refused(deployer: Deployer, result: DeployResult, fragment: str) -> None:
    """Non-zero, exactly one error line naming the reason, and nothing on the instance."""
    assert result.returncode != 0, result.output
    assert len(result.errors) == 1, result.stderr
    assert result.stderr.rstrip("\n").splitlines()[-1] == result.errors[0], result.stderr
    assert fragment in result.errors[0], result.stderr
    assert result.stdout == "", result.stdout
    assert not deployer.remote_dir.exists(), "REMOTE_DIR was created by a failed deploy"


def test_missing_env_file(deployer: Deployer, tmp_path: Path) -> None:
    result = deployer.run("--env-file", str(tmp_path / "missing.env"))
    assert_refused(deployer, result, f"--env-file: no settings file at {tmp_path / 'missing.env'}")
    assert ".env.example" not in result.errors[0]  # the file named is the one to fix


def test_public_key_is_refused(deployer: Deployer, tmp_path: Path) -> None:
    public = tmp_path / "vast_key.pub"
    public.write_text((deployer.sshd.folder / "client_key.pub").read_text())
    public.chmod(0o600)
    env_file = deployer.write_env(tmp_path / "settings.env", VAST_SSH_KEY=str(public))
    result = deployer.run("--env-file", str(env_file))
    assert_refused(deployer, result, f"VAST_SSH_KEY: {public} is a public key")
    assert result.returncode == 1


@pytest.mark.parametrize(
    "command",
    [("logs",), ("logs", "fastapi", "-f"), ("ssh", "true"), ("ssh",), ("tunnel",), ("status",)],
)
def test_every_command_explains_an_unreachable_instance(
    deployer: Deployer, tmp_path: Path, command: tuple[str, ...]
) -> None:
    port = free_port()  # nothing listens there
    env_file = deployer.write_env(tmp_path / "settings.env", VAST_PORT=str(port))
    result = deployer.run("--env-file", str(env_file), *command)
    assert result.returncode == 1, result.output  # not ssh's 255
    assert_refused(
        deployer, result, f"nothing accepts SSH at 127.0.0.1 port {port} (connection refused)"
    )
    assert "Ctrl-C" not in result.stderr, "the tunnel banner came before a connection"


def test_unknown_flag(deployer: Deployer) -> None:
    result = deployer.run("--bogus")
    assert result.returncode == 1
    assert result.errors == ["[deploy] error: unknown flag '--bogus'; see ./deploy_vast.sh --help"]
    flagged = deployer.run("deploy", "--bogus")
    assert flagged.errors == [
        "[deploy] error: deploy: unknown flag '--bogus'; see ./deploy_vast.sh --help"
    ]


@pytest.mark.parametrize("name", ["VAST_HOST", "VAST_PORT", "VAST_SSH_KEY"])
def test_missing_variable(deployer: Deployer, tmp_path: Path, name: str) -> None:
    env_file = deployer.write_env(tmp_path / "settings.env", **{name: None})
    result = deployer.run("--env-file", str(env_file))
    assert_refused(deployer, result, f"{name} is not set in {env_file}")


def test_missing_key(deployer: Deployer, tmp_path: Path) -> None:
    env_file = deployer.write_env(tmp_path / "settings.env", VAST_SSH_KEY=str(tmp_path / "no_key"))
    result = deployer.run("--env-file", str(env_file))
    assert_refused(deployer, result, f"VAST_SSH_KEY: no key at {tmp_path / 'no_key'}")


def test_key_readable_by_others(deployer: Deployer, tmp_path: Path) -> None:
    key = tmp_path / "open_key"
    key.write_bytes(deployer.sshd.client_key.read_bytes())
    key.chmod(0o644)
    env_file = deployer.write_env(tmp_path / "settings.env", VAST_SSH_KEY=str(key))
    result = deployer.run("--env-file", str(env_file))
    assert_refused(deployer, result, "is accessible by other users (mode 644); run: chmod 600")


def test_key_not_authorized(deployer: Deployer, tmp_path: Path) -> None:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env_file = deployer.write_env(tmp_path / "settings.env", VAST_SSH_KEY=str(key))
    result = deployer.run("--env-file", str(env_file))
    assert_refused(deployer, result, f"refused the key {key}")


def test_unreachable_host(deployer: Deployer, tmp_path: Path) -> None:
    env_file = deployer.write_env(tmp_path / "settings.env", VAST_HOST="instance.invalid")
    result = deployer.run("--env-file", str(env_file), DEPLOY_SSH_TIMEOUT="5")
    assert_refused(deployer, result, "cannot resolve VAST_HOST 'instance.invalid'")


def test_wrong_port(deployer: Deployer, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env_file = deployer.write_env(tmp_path / "settings.env", VAST_PORT=str(port))
    result = deployer.run("--env-file", str(env_file))
    assert_refused(
        deployer, result, f"nothing accepts SSH at 127.0.0.1 port {port} (connection refused)"
    )


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        (
            "DEPLOY_MODE",
            "cluster",
            "DEPLOY_MODE must be one of hybrid, standalone, local; got 'cluster'",
        ),
        ("VAST_PORT", "22x", "VAST_PORT must be a port number (1-65535), got '22x'"),
        ("REMOTE_DIR", "workspace", "REMOTE_DIR must be an absolute directory path"),
        ("VAST_HOST", "-oProxyCommand=x", "VAST_HOST must be a host name or IP address"),
    ],
)
def test_bad_setting(
    deployer: Deployer, tmp_path: Path, name: str, value: str, fragment: str
) -> None:
    env_file = deployer.write_env(tmp_path / "settings.env", **{name: value})
    result = deployer.run("--env-file", str(env_file))
    assert_refused(deployer, result, fragment)


def test_instance_without_the_project_image(deployer: Deployer, tmp_path: Path) -> None:
    env_file = deployer.write_env(
        tmp_path / "settings.env", INSTANCE_VENV=str(tmp_path / "no-venv")
    )
    result = deployer.run("--env-file", str(env_file))
    assert_refused(deployer, result, f"the instance lacks {tmp_path / 'no-venv'}/bin/python")
    assert "project's image" in result.errors[0]


def test_changed_host_key(deployer: Deployer, tmp_path: Path) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known_hosts = deployer.source / ".deploy" / "known_hosts"
    known_hosts.parent.mkdir(exist_ok=True)
    saved = known_hosts.read_text() if known_hosts.exists() else None
    known_hosts.write_text(
        f"[127.0.0.1]:{deployer.sshd.port} {(other.with_suffix('.pub')).read_text()}"
    )
    try:
        result = deployer.run()
    finally:
        if saved is None:
            known_hosts.unlink()
        else:
            known_hosts.write_text(saved)
    assert_refused(deployer, result, "differs from the one recorded in .deploy/known_hosts")


def test_unknown_command(deployer: Deployer) -> None:
    result = deployer.run("frobnicate")
    assert result.returncode != 0
    assert result.errors == [
        "[deploy] error: unknown command 'frobnicate'; see ./deploy_vast.sh --help"
    ]


def test_values_are_never_run_as_shell_code(deployer: Deployer, tmp_path: Path) -> None:
    """A REMOTE_DIR full of shell syntax is passed as data everywhere (dry run: read-only)."""
    pwned = tmp_path / "pwned"
    weird = tmp_path / f"dir with 'quotes' \"dq\" $(touch {pwned}) `touch {pwned}2` ;touch {pwned}3"
    env_file = deployer.write_env(tmp_path / "settings.env", REMOTE_DIR=str(weird))
    result = deployer.run("--env-file", str(env_file), "--dry-run")
    assert result.returncode == 0, result.output
    assert "would start the stack" in result.stderr
    assert not weird.exists(), "the dry run created REMOTE_DIR"
    assert not list(tmp_path.glob("pwned*")), "a value from .env ran as shell code"


def test_help(deployer: Deployer) -> None:
    result = deployer.run("--help")
    assert result.returncode == 0
    for word in (
        "deploy",
        "status",
        "logs",
        "tunnel",
        "stop",
        "ssh",
        "offers",
        "--dry-run",
        "--env-file",
    ):
        assert word in result.stdout


def test_offers_prints_the_recommended_search(deployer: Deployer) -> None:
    result = deployer.run("offers")
    assert result.returncode == 0, result.output
    assert "vastai search offers 'gpu_name in [RTX_3090,RTX_4090]" in result.stdout
    assert "disk_space>=50" in result.stdout
    # The image the README names (no git origin in the test's copy), never a placeholder.
    assert "--image 'ghcr.io/<owner>/<repo>:stable'" in result.stdout
    named = deployer.run("offers", VAST_IMAGE="ghcr.io/me/llm-batch:canary")
    assert "--image 'ghcr.io/me/llm-batch:canary'" in named.stdout


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP server on this machine standing in for the laptop's Temporal: says hello."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello from the laptop\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_hybrid_tunnel_exposes_local_temporal_to_the_instance(
    deployer: Deployer, tmp_path: Path, echo_server: int
) -> None:
    """In hybrid mode `tunnel` also reverse-forwards the laptop's Temporal and S3."""
    instance_temporal, instance_s3 = free_port(), free_port()
    env_file = deployer.write_env(
        tmp_path / "hybrid.env",
        DEPLOY_MODE="hybrid",
        TEMPORAL_ADDRESS=f"127.0.0.1:{instance_temporal}",
        MINIO_ENDPOINT=f"127.0.0.1:{instance_s3}",
    )
    api_port, web_port, console_port = free_port(), free_port(), free_port()
    process = deployer.popen(
        "--env-file",
        str(env_file),
        "tunnel",
        TUNNEL_API_PORT=str(api_port),
        TUNNEL_WEB_PORT=str(web_port),
        TUNNEL_S3_CONSOLE_PORT=str(console_port),
        TUNNEL_TEMPORAL_TARGET=f"127.0.0.1:{echo_server}",
        TUNNEL_S3_TARGET=f"127.0.0.1:{echo_server}",
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        lines.extend(process.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The banner comes once ssh is connected, with the local forwards bound.
        wait_for(
            lambda: (
                any("is up (Ctrl-C to stop)" in line for line in lines)
                or process.poll() is not None
            ),
            30,
            "the tunnel's banner",
        )
        assert process.poll() is None, lines
        assert port_is_open(api_port)  # the forward to the API is listening
        wait_for(lambda: port_is_open(instance_temporal), 30, "the reverse forward")
        for port in (instance_temporal, instance_s3):  # as the instance sees them
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                assert conn.makefile().readline() == "hello from the laptop\n"
    finally:
        process.terminate()
        process.wait(timeout=15)
        reader.join(timeout=10)
    stderr = "".join(lines)
    assert f"Temporal: instance 127.0.0.1:{instance_temporal}" in stderr
    assert stderr.rstrip().endswith("[deploy] tunnel closed"), stderr
    # sshd closes the forwarded port once it notices the client has gone.
    wait_for(lambda: not port_is_open(instance_temporal), 15, "the reverse forward to close")


def test_api_port_taken_on_the_instance(deployer: Deployer, tmp_path: Path) -> None:
    """Another process on API_PORT (say, the image's own stack): refuse to start a second one."""
    remote_dir = tmp_path / "workspace"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env_file = deployer.write_env(
            tmp_path / "settings.env", REMOTE_DIR=str(remote_dir), API_PORT=str(port)
        )
        result = deployer.run("--env-file", str(env_file))
    assert result.returncode != 0, result.output
    assert len(result.errors) == 1, result.stderr
    assert f"port {port} (API_PORT) is already taken on the instance" in result.errors[0]
    assert not (remote_dir / "data" / "supervisord.pid").exists(), "a second stack was started"


def test_secrets_and_data_dir_are_never_synced(deployer: Deployer, tmp_path: Path) -> None:
    """The key and the env file inside the repository, *.pem, *.key and id_* stay here; a
    DATA_DIR of another name is protected from --delete like data/.

    The deploy syncs, then stops before starting anything (API_PORT is taken), so no stack
    boots."""
    source = deployer.source
    key = source / "keys" / "vast_key"
    env_file = source / "private" / "prod settings.env"
    planted = [source / "certs" / "server.pem", source / "id_ed25519", source / "app" / "tls.key"]
    for path in [key, env_file, *planted]:
        path.parent.mkdir(exist_ok=True)
    key.write_bytes(deployer.sshd.client_key.read_bytes())
    key.chmod(0o600)
    for path in planted:
        path.write_text("secret\n")
    remote_dir = tmp_path / "workspace"
    kept = remote_dir / "state" / "temporal.db"
    kept.parent.mkdir(parents=True)
    kept.write_text("the instance's data\n")
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            deployer.write_env(
                env_file,
                REMOTE_DIR=str(remote_dir),
                API_PORT=str(squatter.getsockname()[1]),
                VAST_SSH_KEY="keys/vast_key",  # relative to the repository
                DATA_DIR="./state/",
            )
            sent_env = env_file.read_bytes()
            result = deployer.run("--env-file", str(env_file))
    finally:
        for path in [key, env_file, *planted]:
            path.unlink()
        for folder in ("keys", "private", "certs"):
            (source / folder).rmdir()
    assert len(result.errors) == 1, result.output
    assert "(API_PORT) is already taken on the instance" in result.errors[0]
    assert (remote_dir / "kernel" / "config.py").exists(), "the code was not synced"
    assert kept.read_text() == "the instance's data\n", "DATA_DIR was deleted by the sync"
    for relative in (
        "keys/vast_key",
        "private/prod settings.env",
        "certs/server.pem",
        "id_ed25519",
        "app/tls.key",
    ):
        assert not (remote_dir / relative).exists(), f"{relative} was sent to the instance"
    # The env file reaches the instance only as its .env (mode 600).
    assert (remote_dir / ".env").read_bytes() == sent_env


def test_symlinked_venv_and_models_are_not_synced(deployer: Deployer, tmp_path: Path) -> None:
    """A checkout whose .venv and models/ are symlinks (shared between checkouts) syncs as one
    whose are folders: the links are not sent, and the instance's models/ is kept.

    The deploy syncs, then stops before starting anything (API_PORT is taken)."""
    source = deployer.source
    shared = tmp_path / "shared"
    (shared / "venv").mkdir(parents=True)
    (shared / "models").mkdir()
    links = {".venv": shared / "venv", "models": shared / "models", "logs": shared / "models"}
    for name, target in links.items():
        (source / name).symlink_to(target)
    remote_dir = tmp_path / "workspace"
    kept = remote_dir / "models" / "big.gguf"
    kept.parent.mkdir(parents=True)
    kept.write_text("the instance's model\n")
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            env_file = deployer.write_env(
                tmp_path / "settings.env",
                REMOTE_DIR=str(remote_dir),
                API_PORT=str(squatter.getsockname()[1]),
            )
            result = deployer.run("--env-file", str(env_file))
    finally:
        for name in links:
            (source / name).unlink()
    assert len(result.errors) == 1, result.output
    assert "(API_PORT) is already taken on the instance" in result.errors[0], result.output
    assert (remote_dir / "kernel" / "config.py").exists(), "the code was not synced"
    assert kept.read_text() == "the instance's model\n"
    assert not (remote_dir / ".venv").exists() and not (remote_dir / ".venv").is_symlink()
    assert not (remote_dir / "logs").is_symlink()
