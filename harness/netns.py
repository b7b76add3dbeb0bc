"""Real network faults for the tests: a network namespace joined to this machine's own
(root) namespace by veth pairs, one pair a service, so that each link can be cut, healed or
slowed on its own.

Only what this module made is ever touched: the namespace it created, the veth pairs it
created, and addresses in 10.203.0.0/16 that it assigned to them (each pair a /30 that exists
only on this machine). A service the box must reach listens on the root-side address of its
pair; processes in the root namespace reach it there too (it is a local address of this
machine), and still do while the pair is cut, since a cut takes down the namespace's end.

    with Namespace.create(["temporal", "s3"]) as ns:
        ns.links["s3"].cut()      # the box reaches Temporal, not S3
        ns.links["s3"].heal()
        ns.links["s3"].slow(delay_ms=200, loss_percent=5)   # tc netem (when the kernel has it)
        ns.popen([...])           # a process inside the namespace, stopped by pid on close

Needs root and iproute2 (`ip`, `tc`); `unavailable()` says why not, for a skip reason.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

SUBNET = ipaddress.IPv4Network("10.203.0.0/16")
_checked: dict[str, str | None] = {}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can): not root, no iproute2, or the
    kernel refuses."""
    if "netns" in _checked:
        return _checked["netns"]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    elif not shutil.which("ip") or not shutil.which("tc"):
        reason = "iproute2 (ip, tc) is not installed (scripts/setup.sh installs it)"
    else:
        name = f"lbprobe{os.getpid()}"
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            reason = f"`ip netns add` failed: {made.stderr.strip()}"
        else:
            _ip("netns", "del", name, check=False)
    _checked["netns"] = reason
    return reason


def netem_unavailable() -> str | None:
    """Why `tc qdisc ... netem` cannot be used here (None: it can): the kernel may be built
    without it (CONFIG_NET_SCH_NETEM)."""
    if "netem" in _checked:
        return _checked["netem"]
    reason = unavailable()
    if reason is None:
        name = f"lbnetem{os.getpid()}"
        _ip("netns", "add", name)
        try:
            _ip("-n", name, "link", "add", "lbna", "type", "veth", "peer", "name", "lbnb")
            tried = _tc(
                "-n",
                name,
                "qdisc",
                "add",
                "dev",
                "lbna",
                "root",
                "netem",
                "delay",
                "1ms",
                check=False,
            )
            if tried.returncode != 0:
                reason = f"this kernel has no tc netem qdisc ({tried.stderr.strip()})"
        finally:
            _ip("netns", "del", name, check=False)
    _checked["netem"] = reason
    return reason


def _free_subnet(count: int) -> list[ipaddress.IPv4Network]:
    """`count` /30s in 10.203.0.0/16 that no interface of this machine uses, starting at a
    place that depends on the pid (tests of several checkouts may run at once)."""
    used = _ip("-o", "-4", "addr", "show").stdout
    start = (os.getpid() * 8) % 16000
    found: list[ipaddress.IPv4Network] = []
    subnets = list(SUBNET.subnets(new_prefix=30))
    for index in range(len(subnets)):
        net = subnets[(start + index) % len(subnets)]
        if not any(str(host) in used for host in net.hosts()):
            found.append(net)
            if len(found) == count:
                return found
    raise RuntimeError("no free /30 left in 10.203.0.0/16")


@dataclass
class Link:
    """One veth pair: `root_address` on this machine's side, `ns_address` in the namespace."""

    namespace: str
    root_if: str
    ns_if: str
    root_address: str
    ns_address: str
    cut_at: float | None = None

    def cut(self) -> None:
        """The namespace's end goes down: nothing passes either way (connections from the
        namespace fail as unreachable; those open stall), while the root side keeps its
        address and its services stay reachable from this machine."""
        _ip("-n", self.namespace, "link", "set", self.ns_if, "down")
        self.cut_at = time.monotonic()

    def heal(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.ns_if, "up")
        self.cut_at = None

    def slow(self, delay_ms: int, loss_percent: float = 0.0) -> None:
        """tc netem on both ends: every packet delayed `delay_ms` (the round trip grows by
        twice that) and lost with `loss_percent` each way."""
        netem = ["netem", "delay", f"{delay_ms}ms"]
        if loss_percent:
            netem += ["loss", f"{loss_percent:g}%"]
        _tc("-n", self.namespace, "qdisc", "replace", "dev", self.ns_if, "root", *netem)
        _tc("qdisc", "replace", "dev", self.root_if, "root", *netem)

    def narrow(self, rate_kbit: int) -> None:
        """tc tbf on both ends: at most `rate_kbit` each way, a burst of 16 kB, packets
        queued past 1 s dropped (a thin, congested link; works on kernels without netem)."""
        tbf = ["tbf", "rate", f"{rate_kbit}kbit", "burst", "16kb", "latency", "1s"]
        _tc("-n", self.namespace, "qdisc", "replace", "dev", self.ns_if, "root", *tbf)
        _tc("qdisc", "replace", "dev", self.root_if, "root", *tbf)

    def clear(self) -> None:
        """No netem or tbf any more (nothing when there was none)."""
        _tc("-n", self.namespace, "qdisc", "del", "dev", self.ns_if, "root", check=False)
        _tc("qdisc", "del", "dev", self.root_if, "root", check=False)


@dataclass
class Namespace:
    name: str
    links: dict[str, Link] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, services: Sequence[str]) -> Namespace:
        """A namespace with its loopback up and one veth pair for each of `services`."""
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        _remove_leftovers()
        tag = f"{os.getpid() % 100000}"
        namespace = cls(name=f"lbbox{tag}")
        _ip("netns", "add", namespace.name)
        try:
            _ip("-n", namespace.name, "link", "set", "lo", "up")
            for index, (service, net) in enumerate(
                zip(services, _free_subnet(len(services)), strict=True)
            ):
                root_address, ns_address = (str(host) for host in net.hosts())
                root_if = f"lb{index}h{tag}"
                ns_if = f"lb{index}b"
                _ip("link", "add", root_if, "type", "veth", "peer", "name", ns_if)
                _ip("link", "set", ns_if, "netns", namespace.name)
                _ip("addr", "add", f"{root_address}/30", "dev", root_if)
                _ip("link", "set", root_if, "up")
                _ip("-n", namespace.name, "addr", "add", f"{ns_address}/30", "dev", ns_if)
                _ip("-n", namespace.name, "link", "set", ns_if, "up")
                namespace.links[service] = Link(
                    namespace.name, root_if, ns_if, root_address, ns_address
                )
        except BaseException:
            namespace.close()
            raise
        return namespace

    @property
    def exec_prefix(self) -> list[str]:
        """What runs a command inside the namespace (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name]

    def popen(
        self, args: Sequence[str], log: Path, env: Mapping[str, str], **options: Any
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [*self.exec_prefix, *args],
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                **options,
            )
        self.processes.append(process)
        return process

    def run(self, args: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.exec_prefix, *args], capture_output=True, text=True, timeout=timeout
        )

    def heal_all(self) -> None:
        for link in self.links.values():
            link.clear()
            link.heal()

    def close(self) -> None:
        """Stops what it started (by pid), then deletes the namespace, which deletes its
        veth pairs (both ends)."""
        for process in self.processes:
            stop_process(process)
        _ip("netns", "del", self.name, check=False)
        for link in self.links.values():  # gone with the namespace; make sure
            _ip("link", "del", link.root_if, check=False)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _remove_leftovers() -> None:
    """Namespaces an earlier run left behind (killed before its teardown): those named by
    this module whose creator is gone and that hold no process any more."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith("lbbox") or not name[5:].isdigit():
            continue
        if Path(f"/proc/{name[5:]}").exists() or _ip("netns", "pids", name).stdout.strip():
            continue
        _ip("netns", "del", name, check=False)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM (after SIGCONT, in case it was frozen), then SIGKILL: by pid, never by name."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
