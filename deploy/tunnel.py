"""The tunnel: the instance's API, dashboard and S3 console on this machine's ports; in
hybrid mode also this machine's Temporal and S3 on the instance (reverse forwards), for the
addresses the instance's .env gives as 127.0.0.1 or localhost.

`ssh -N` runs as a child until it ends or this process is told to stop (Ctrl-C, SIGTERM).
The banner comes only once ssh has connected and bound the local ports (ssh runs its
LocalCommand then); a failure to connect ends with the usual one-line reason.
"""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from types import FrameType

from deploy.console import DeployError, log, out, trace
from deploy.remote import Remote, explain_ssh_failure
from deploy.settings import DeploySettings
from kernel.config import split_host_port

_LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Forwards:
    args: tuple[str, ...]  # ssh options and -L / -R forwards
    reverse: tuple[str, ...]  # what each reverse forward means, for the banner


def forwards(settings: DeploySettings) -> Forwards:
    stack = settings.stack
    args = [
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        f"127.0.0.1:{stack.TUNNEL_API_PORT}:127.0.0.1:{stack.API_PORT}",
        "-L",
        f"127.0.0.1:{stack.TUNNEL_WEB_PORT}:127.0.0.1:{stack.WEB_PORT}",
        "-L",
        f"127.0.0.1:{stack.TUNNEL_S3_CONSOLE_PORT}:127.0.0.1:{stack.MINIO_CONSOLE_PORT}",
    ]
    reverse = []
    if stack.DEPLOY_MODE == "hybrid":
        for what, address, target in (
            ("Temporal", stack.TEMPORAL_ADDRESS, stack.TUNNEL_TEMPORAL_TARGET),
            ("S3", stack.MINIO_ENDPOINT, stack.TUNNEL_S3_TARGET),
        ):
            host, port = split_host_port(address)
            if host in _LOOPBACK:
                args += ["-R", f"127.0.0.1:{port}:{target}"]
                reverse.append(f"{what}: instance 127.0.0.1:{port} -> this machine {target}")
    return Forwards(tuple(args), tuple(reverse))


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def banner(settings: DeploySettings, reverse: tuple[str, ...]) -> None:
    stack = settings.stack
    log(f"tunnel to {settings.where} is up (Ctrl-C to stop):")
    log(
        f"  API docs    http://127.0.0.1:{stack.TUNNEL_API_PORT}/docs   -> instance "
        f"127.0.0.1:{stack.API_PORT}"
    )
    log(
        f"  dashboard   http://127.0.0.1:{stack.TUNNEL_WEB_PORT}/       -> instance "
        f"127.0.0.1:{stack.WEB_PORT}"
    )
    log(
        f"  S3 console  http://127.0.0.1:{stack.TUNNEL_S3_CONSOLE_PORT}/       -> instance "
        f"127.0.0.1:{stack.MINIO_CONSOLE_PORT}"
    )
    for line in reverse:
        log(f"  {line}")


class _Stop(Exception):
    pass


def run_tunnel(remote: Remote) -> int:
    settings = remote.settings
    stack = settings.stack
    for port in (stack.TUNNEL_API_PORT, stack.TUNNEL_WEB_PORT, stack.TUNNEL_S3_CONSOLE_PORT):
        if port_in_use(port):
            raise DeployError(
                f"local port {port} is already in use: stop what listens there or set "
                "TUNNEL_API_PORT / TUNNEL_WEB_PORT / TUNNEL_S3_CONSOLE_PORT"
            )
    log(f"tunnel: connecting to {settings.where}")
    plan = forwards(settings)
    argv = [*remote.ssh(), "-N", *plan.args, settings.target]
    if remote.dry_run:
        out(f"[dry-run] would run: {shlex.join(argv)}")
        return 0
    ctl = remote.temp_dir()
    marker, errors = ctl / "connected", ctl / "tunnel.log"
    argv = [
        *remote.ssh(),
        "-n",
        "-N",
        *plan.args,
        "-o",
        "PermitLocalCommand=yes",
        "-o",
        f"LocalCommand=: >{marker}",
        settings.target,
    ]
    trace(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    with open(errors, "w") as sink:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=sink)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, stop)
    try:
        while not marker.exists():
            if process.poll() is not None:
                raise DeployError(explain_ssh_failure(errors.read_text(), settings))
            time.sleep(0.1)
        banner(settings, plan.reverse)
        rc = process.wait()
        raise DeployError(
            f"the tunnel to {settings.where} closed (exit {rc}): "
            f"{explain_ssh_failure(errors.read_text(), settings)}"
        )
    except _Stop:
        process.terminate()
        process.wait()
        log("tunnel closed")
        return 0
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
