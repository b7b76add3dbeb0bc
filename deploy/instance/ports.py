"""Are the ports this stack's programs will bind free? Run by scripts/start_services.sh before it
starts a new supervisord (and by its --dry-run).

    cd PROJECT_ROOT && "$INSTANCE_VENV/bin/python" -m deploy.instance.ports

Reads the settings as the launcher exported them. Exit status 0 when every port is free;
otherwise 1 and one line on stdout naming the setting, the port, the process holding it and,
when that process belongs to another stack of this project (its programs inherit DATA_DIR from
supervisord), that stack's DATA_DIR and the command that stops it.

The holder is found without `ss` or `lsof` (an instance image may lack both): the listening
socket's inode from /proc/net/tcp and /proc/net/tcp6, then the process with that inode among
its /proc/PID/fd links. Another user's processes are not visible to a non-root user.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kernel.config import PROJECT_ROOT, Settings, SettingsError, load_settings, split_host_port

PROC = Path("/proc")
TCP_LISTEN = "0A"
TCP_TIME_WAIT = "06"
# What `weed mini` binds above its S3 port (scripts/run_program.sh gives it S3_PORT+1..+9).
SEAWEEDFS_PORTS = {
    1: "S3 gRPC",
    2: "master",
    3: "master gRPC",
    4: "volume",
    5: "volume gRPC",
    6: "filer",
    7: "filer gRPC",
    8: "admin",
    9: "admin gRPC",
}


@dataclass(frozen=True)
class Binding:
    """One address a program of the stack listens on, and the setting that decides it."""

    setting: str
    host: str
    port: int
    program: str
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.setting}{self.note}"


@dataclass(frozen=True)
class Holder:
    """A process that holds a port, and what its environment says about its stack."""

    pid: int
    command: str
    data_dir: str | None
    supervisord_pid: int | None
    root: str | None


def bindings(settings: Settings, s3_server: str | None = None) -> list[Binding]:
    """Every address the programs this mode runs will listen on (supervisord.conf and
    scripts/run_program.sh), in the order they are checked."""
    found = [Binding("API_PORT", settings.API_HOST, settings.API_PORT, "fastapi")]
    if settings.runs_web:
        found.append(Binding("WEB_PORT", settings.API_HOST, settings.WEB_PORT, "web"))
    if settings.runs_temporal:
        host, port = split_host_port(settings.TEMPORAL_ADDRESS)
        found.append(Binding("TEMPORAL_ADDRESS", host, port, "temporal"))
        found.append(Binding("TEMPORAL_UI_PORT", host, settings.TEMPORAL_UI_PORT, "temporal"))
    if settings.runs_s3:
        host, port = split_host_port(settings.MINIO_ENDPOINT)
        found.append(Binding("MINIO_ENDPOINT", host, port, "minio"))
        server = (
            s3_server if s3_server is not None else ("minio" if shutil.which("minio") else "weed")
        )
        if server == "minio":
            found.append(Binding("MINIO_CONSOLE_PORT", host, settings.MINIO_CONSOLE_PORT, "minio"))
        else:
            for offset, what in SEAWEEDFS_PORTS.items():
                note = f" + {offset}, SeaweedFS's {what}"
                found.append(Binding("MINIO_ENDPOINT", host, port + offset, "minio", note))
    if settings.runs_llama:
        url = urlsplit(settings.LLAMA_URL)
        found.append(Binding("LLAMA_URL", url.hostname or "", url.port or 80, "llama"))
    for queue, port in settings.worker_metrics_ports.items():
        if port:
            setting = f"WORKER_{queue.upper()}_METRICS_PORT"
            found.append(Binding(setting, "127.0.0.1", port, f"worker-{queue}"))
    return found


def clashes(found: list[Binding]) -> str | None:
    """Two settings of the same stack that give one port to two programs."""
    seen: dict[int, Binding] = {}
    for binding in found:
        other = seen.get(binding.port)
        if other is not None and other.program != binding.program:
            return (
                f"{binding.label} and {other.label} both use port {binding.port}: "
                "give each program its own port"
            )
        seen.setdefault(binding.port, binding)
    return None


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on host:port now, or None when it could."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As the servers do, so that a socket of a stopped stack in TIME_WAIT does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc
    return None


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6}: hex, each 32-bit word in the host's byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw)


WILDCARDS = frozenset({"0.0.0.0", "::"})


def _resolve(host: str) -> str | None:
    try:
        return str(socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM)[0][4][0])
    except (socket.gaierror, IndexError):
        return None


def socket_inodes(port: int, host: str = "", proc: Path = PROC) -> list[int]:
    """Inodes of the TCP sockets bound to `port`: listening ones first, and among them those on
    `host`'s address or a wildcard one (either blocks the other) before the rest."""
    wanted = _resolve(host) if host else None
    found: list[tuple[bool, bool, int]] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            hex_address, _, hex_port = fields[1].rpartition(":")
            state, inode = fields[3], int(fields[9])
            if int(hex_port, 16) != port or inode == 0 or state == TCP_TIME_WAIT:
                continue
            address = _address(hex_address)
            overlaps = wanted is None or address == wanted or bool({address, wanted} & WILDCARDS)
            found.append((state != TCP_LISTEN, not overlaps, inode))
    return [inode for _, _, inode in sorted(found)]


def socket_owner(inodes: list[int], proc: Path = PROC) -> int | None:
    """The lowest pid among the processes holding one of these socket inodes."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    if not wanted:
        return None
    owners: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    owners.append(int(entry.name))
                    break
            except OSError:
                continue
    return min(owners) if owners else None


def _environ(pid: int, proc: Path) -> dict[str, str]:
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _command(pid: int, proc: Path) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if words:
        words[0] = Path(words[0]).name
    text = " ".join(" ".join(words).split()) or "?"  # one line, whatever the arguments hold
    return text if len(text) <= 60 else text[:57] + "..."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(port: int, host: str = "", proc: Path = PROC) -> Holder | None:
    """The process holding `port`, with the DATA_DIR of its stack when it belongs to one."""
    pid = socket_owner(socket_inodes(port, host, proc)[:1], proc)
    if pid is None:
        return None
    env = _environ(pid, proc)
    # The launcher exports both to supervisord, which every program inherits.
    data_dir = env.get("DATA_DIR") if "SUPERVISOR_SOCKET" in env else None
    supervisord_pid = None
    root = None
    if data_dir:
        try:
            supervisord_pid = int((Path(data_dir) / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            supervisord_pid = None
        if supervisord_pid is not None and not _alive(supervisord_pid):
            supervisord_pid = None
        try:
            root = os.readlink(proc / str(pid) / "cwd")  # supervisord.conf's %(here)s
        except OSError:
            root = None
    return Holder(pid, _command(pid, proc), data_dir, supervisord_pid, root)


def stop_command(data_dir: str, root: str | None) -> str:
    """How to stop the stack that uses DATA_DIR (stop_services.sh needs only its pid file)."""
    assignment = f"DATA_DIR={shlex.quote(data_dir)}"
    if root is None or Path(root).resolve() == Path(PROJECT_ROOT).resolve():
        return f"{assignment} make down"
    return f"{assignment} {shlex.quote(str(Path(root) / 'scripts' / 'stop_services.sh'))}"


def describe(binding: Binding, error: OSError, found: Holder | None, data_dir: str) -> str:
    """One line: what is taken, by whom, and what to do."""
    where = f"port {binding.port} ({binding.label}) on {binding.host or '*'}"
    if error.errno != errno.EADDRINUSE:
        return (
            f"{binding.program} cannot listen on {binding.host}:{binding.port} "
            f"({binding.label}): {error.strerror or error}; change {binding.setting}"
        )
    other = f"or set another {binding.setting}"
    if found is None:
        return (
            f"{where} is already taken, by a process this user cannot see (another user's?); "
            f"free it {other}"
        )
    process = f"pid {found.pid} ({found.command})"
    if found.data_dir and found.supervisord_pid is not None:
        same = Path(found.data_dir).resolve() == Path(data_dir).resolve()
        stack = "this DATA_DIR's stack" if same else "another stack"
        return (
            f"{where} is already taken by {process} of {stack}, DATA_DIR={found.data_dir} "
            f"(supervisord pid {found.supervisord_pid}); stop that stack first "
            f"({stop_command(found.data_dir, found.root)}) {other}"
        )
    if found.data_dir:
        return (
            f"{where} is already taken by {process}, left over from the stack with "
            f"DATA_DIR={found.data_dir} (its supervisord is gone); stop it (kill {found.pid}) "
            f"{other}"
        )
    return f"{where} is already taken by {process}; stop it {other}"


def check(settings: Settings, s3_server: str | None = None) -> str | None:
    """None when every port is free; else the one line that says which is not and why."""
    found = bindings(settings, s3_server)
    clash = clashes(found)
    if clash is not None:
        return clash
    taken: list[tuple[Binding, OSError]] = []
    for binding in found:
        error = bind_error(binding.host, binding.port)
        if error is not None:
            taken.append((binding, error))
    if not taken:
        return None
    first, error = taken[0]
    line = describe(first, error, holder(first.port, first.host), str(settings.data_dir))
    others = list(dict.fromkeys(b.setting for b, _ in taken if b.setting != first.setting))
    if others:
        line += f"; also taken: the ports of {', '.join(others)}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Exit 1 with one line naming the first port this stack needs that is taken."
    )
    parser.add_argument(
        "--s3-server",
        choices=("minio", "weed"),
        help="the S3 server the minio program runs (default: minio when on PATH, else weed)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"invalid setting {exc}")
        return 2
    problem = check(settings, args.s3_server)
    if problem is None:
        return 0
    print(problem)
    return 1


if __name__ == "__main__":
    sys.exit(main())
