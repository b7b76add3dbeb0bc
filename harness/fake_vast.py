"""A local stand-in for the handful of Vast.ai REST endpoints the official SDK calls, so the
real `vastai` SDK, the real deploy and real sshd boxes run without an account.

A real HTTP server on a free port of 127.0.0.1 (point the SDK at it with `VAST_URL`):

    POST   /api/v0/bundles/          search offers (the query language's eq/neq/gt/gte/lt/
                                     lte/in/notin, `order`, `type` on-demand|bid)
    PUT    /api/v0/asks/{offer}/     create: starts a box through `start_box`
    GET    /api/v0/instances/{id}/   show one ({"instances": row or null})
    GET    /api/v1/instances/        list (one page)
    PUT    /api/v0/instances/{id}/   {"state": "stopped"|"running"} or {"label": ...}
    DELETE /api/v0/instances/{id}/   destroy: stops the box
    GET    /api/v0/users/current     the account (credit)

Creating an instance calls `start_box(instance_id, env)`, which returns a `FakeBox` (an
sshd the test started; host and port reached as the instance's direct SSH). `outbid(id)`
and `lose_host(id)` kill that box the way Vast pauses an outbid instance or loses a host.
The fake meters spend: price x the seconds an instance was running (created, not yet
stopped, outbid, lost or destroyed). Each instance gets a scoped key (`CONTAINER_API_KEY`
in its env, with `CONTAINER_ID`) that may stop or destroy that instance only.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit


class FakeBox(Protocol):
    host: str
    port: int

    def stop(self) -> None: ...


@dataclass
class NoBox:
    """A box whose SSH never answers (nothing listens on the port)."""

    host: str = "127.0.0.1"
    port: int = 9  # discard: closed here

    def stop(self) -> None:
        return None


def offer(offer_id: int, gpu: str = "RTX 4090", price: float = 0.40, **fields: Any) -> dict:
    """One marketplace offer with Vast's field names and REST units."""
    row = {
        "id": offer_id,
        "machine_id": 1000 + offer_id,
        "host_id": 2000 + offer_id,
        "gpu_name": gpu,
        "num_gpus": 1,
        "gpu_ram": 24564,
        "cuda_max_good": 12.8,
        "disk_space": 200.0,
        "reliability2": 0.995,
        "direct_port_count": 10,
        "dph_total": price,
        "min_bid": round(price * 0.4, 4),
        "verified": True,
        "external": False,
        "rentable": True,
        "geolocation": "Nowhere, XX",
        "inet_down": 900.0,
    }
    row.update(fields)
    return row


@dataclass
class FakeInstance:
    id: int
    offer: dict[str, Any]
    price: float
    is_bid: bool
    label: str
    env: dict[str, str]
    image: str
    key: str
    created: float
    status: str | None = None
    intended: str = "running"
    box: FakeBox | None = None
    billing_since: float | None = None
    billed_seconds: float = 0.0
    destroyed: float | None = None
    events: list[tuple[float, str]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        ports = {}
        host, port = "", 0
        if self.box is not None and self.status == "running":
            host, port = self.box.host, self.box.port
            ports = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
        return {
            "id": self.id,
            "machine_id": self.offer["machine_id"],
            "gpu_name": self.offer["gpu_name"],
            "num_gpus": 1,
            "actual_status": self.status,
            "intended_status": self.intended,
            "cur_state": "running" if self.status == "running" else "stopped",
            "public_ipaddr": host,
            "ports": ports,
            "ssh_host": host,
            "ssh_port": port,
            "dph_total": self.price,
            "is_bid": self.is_bid,
            "label": self.label,
            "image_uuid": self.image,
            "start_date": self.created,
            "extra_env": [[k, v] for k, v in self.env.items()],
        }


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and float(a) > float(b),
    "gte": lambda a, b: a is not None and float(a) >= float(b),
    "lt": lambda a, b: a is not None and float(a) < float(b),
    "lte": lambda a, b: a is not None and float(a) <= float(b),
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}
# A stop or destroy asked through the API takes the box this long after the answer.
ASKED_HALT_SECONDS = 1.0

_NOT_FILTERS = {"order", "type", "limit", "allocated_storage", "disable_bundling"}


def matches(row: dict[str, Any], query: dict[str, Any]) -> bool:
    for name, conditions in query.items():
        if name in _NOT_FILTERS or not isinstance(conditions, dict):
            continue
        for op, value in conditions.items():
            if op not in _OPS:
                raise ValueError(f"unknown operator {op!r} on {name!r}")
            if not _OPS[op](row.get(name), value):
                return False
    return True


class FakeVast:
    """The fake's state and its HTTP server; every method is safe from any thread."""

    def __init__(
        self,
        offers: list[dict[str, Any]],
        start_box: Callable[[int, dict[str, str]], FakeBox],
        api_key: str = "fake-vast-key",
        credit: float = 100.0,
        boot_seconds: float = 0.0,
    ) -> None:
        self.offers = {int(o["id"]): o for o in offers}
        self.start_box = start_box
        self.api_key = api_key
        self.credit = credit
        self.boot_seconds = boot_seconds
        self.refuse_offers: set[int] = set()
        # The next this many requests answer 503, as Vast does in an outage (the SDK tries
        # each call 4 times).
        self.fail_next = 0
        self.instances: dict[int, FakeInstance] = {}
        self.requests: list[tuple[str, str]] = []
        self._ids = itertools.count(7001)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # The server -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeVast:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops the server and every box still up (the instances stay as they were)."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for instance in self.instances.values():
                if instance.box is not None:
                    instance.box.stop()

    # What a test does to the marketplace -----------------------------------------------

    def outbid(self, instance_id: int) -> None:
        """An interruptible instance outbid: paused by the host, its box gone."""
        self._halt(instance_id, "stopped", "outbid")

    def lose_host(self, instance_id: int) -> None:
        self._halt(instance_id, "offline", "host lost")

    def running(self) -> list[int]:
        with self._lock:
            return [
                i.id
                for i in self.instances.values()
                if i.status in (None, "loading", "running") and i.destroyed is None
            ]

    def spend(self, instance_id: int) -> float:
        """USD billed: price x seconds running."""
        with self._lock:
            instance = self.instances[instance_id]
            seconds = instance.billed_seconds
            if instance.billing_since is not None:
                seconds += time.time() - instance.billing_since
            return instance.price * seconds / 3600.0

    # State changes ---------------------------------------------------------------------

    def _bill_stop(self, instance: FakeInstance) -> None:
        if instance.billing_since is not None:
            instance.billed_seconds += time.time() - instance.billing_since
            instance.billing_since = None

    def _halt(self, instance_id: int, status: str, why: str, asked: bool = False) -> None:
        """The meter stops now. An outbid or a lost host takes the box at once; a stop or
        destroy asked through the API takes it a moment after the answer, as on Vast (the
        asker may be the box itself: its autostop logs the answer)."""
        with self._lock:
            instance = self.instances[instance_id]
            box, instance.box = instance.box, None
            instance.status = status
            self._bill_stop(instance)
            instance.events.append((time.time(), why))
        if box is None:
            return
        if asked:
            threading.Timer(ASKED_HALT_SECONDS, box.stop).start()
        else:
            box.stop()

    def _boot(self, instance: FakeInstance) -> None:
        if self.boot_seconds:
            time.sleep(self.boot_seconds)
        box = self.start_box(instance.id, dict(instance.env))
        with self._lock:
            if instance.destroyed is not None or instance.status not in (None, "loading"):
                box.stop()
                return
            instance.box = box
            instance.status = "running"
            instance.events.append((time.time(), "running"))

    def create(self, offer_id: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self.credit <= 0:
                return 400, {
                    "success": False,
                    "error": "insufficient_credit",
                    "msg": "Your account lacks credit; see the billing page.",
                }
            ask = self.offers.get(offer_id)
            taken = any(
                i.offer["id"] == offer_id and i.destroyed is None for i in self.instances.values()
            )
            if ask is None or taken or offer_id in self.refuse_offers:
                return 400, {
                    "success": False,
                    "error": "no_such_ask",
                    "msg": f"Instance type by id {offer_id} is not available.",
                }
            is_bid = body.get("price") is not None
            price = float(body["price"]) if is_bid else float(ask["dph_total"])
            instance_id = next(self._ids)
            key = secrets.token_hex(16)
            env = {str(k): str(v) for k, v in (body.get("env") or {}).items()}
            env.update(CONTAINER_ID=str(instance_id), CONTAINER_API_KEY=key, VAST_URL=self.url)
            instance = FakeInstance(
                id=instance_id,
                offer=ask,
                price=price,
                is_bid=is_bid,
                label=str(body.get("label") or ""),
                env=env,
                image=str(body.get("image") or ""),
                key=key,
                created=time.time(),
                status="loading",
                billing_since=time.time(),
            )
            self.instances[instance_id] = instance
        threading.Thread(target=self._boot, args=(instance,), daemon=True).start()
        return 200, {"success": True, "new_contract": instance_id}

    def set_state(self, instance_id: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            instance = self.instances.get(instance_id)
            if instance is None or instance.destroyed is not None:
                return 404, {"success": False, "error": "no_such_instance"}
            if "label" in body:
                instance.label = str(body["label"])
            state = body.get("state")
        if state == "stopped":
            instance.intended = "stopped"
            self._halt(instance_id, "stopped", "stopped by the API", asked=True)
        elif state == "running":
            with self._lock:
                instance.intended = "running"
                instance.status = "loading"
                instance.billing_since = time.time()
            threading.Thread(target=self._boot, args=(instance,), daemon=True).start()
        return 200, {"success": True}

    def destroy(self, instance_id: int) -> tuple[int, dict[str, Any]]:
        with self._lock:
            instance = self.instances.get(instance_id)
            if instance is None or instance.destroyed is not None:
                return 404, {"success": False, "error": "no_such_instance"}
        self._halt(instance_id, "exited", "destroyed", asked=True)
        with self._lock:
            instance.destroyed = time.time()
        return 200, {"success": True}

    # Auth ------------------------------------------------------------------------------

    def allowed(self, key: str, instance_id: int | None) -> bool:
        if key == self.api_key:
            return True
        with self._lock:
            instance = self.instances.get(instance_id) if instance_id is not None else None
            return instance is not None and secrets.compare_digest(key, instance.key)


def _by(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda row: float(row.get(name) or 0)


def _handler(fake: FakeVast) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

        def _send(self, status: int, body: Any, **headers: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if not length:
                return {}
            loaded = json.loads(self.rfile.read(length) or b"{}")
            return loaded if isinstance(loaded, dict) else {}

        def _route(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") + "/"
            body = self._body()
            fake.requests.append((method, path))
            with fake._lock:
                failing = fake.fail_next > 0
                fake.fail_next -= failing
            if failing:
                # Retry-After 0: the SDK's own retries (3) come at once.
                self._send(503, {"success": False, "msg": "Service Unavailable"}, Retry_After="0")
                return
            key = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            words = path.strip("/").split("/")
            target = int(words[-1]) if words[-1].isdigit() else None
            scoped = method in ("PUT", "DELETE") and words[:3] == ["api", "v0", "instances"]
            if not fake.allowed(key, target if scoped else None):
                self._send(
                    401,
                    {
                        "success": False,
                        "error": "invalid_api_key",
                        "msg": "Invalid or missing API key.",
                    },
                )
                return
            if method == "POST" and path == "/api/v0/bundles/":
                self._search(body)
            elif method == "PUT" and words[:3] == ["api", "v0", "asks"] and target is not None:
                self._send(*fake.create(target, body))
            elif method == "GET" and path == "/api/v1/instances/":
                with fake._lock:
                    rows = [i.row() for i in fake.instances.values() if i.destroyed is None]
                self._send(
                    200, {"instances": rows, "next_token": None, "total_instances": len(rows)}
                )
            elif method == "GET" and words[:3] == ["api", "v0", "instances"] and target:
                with fake._lock:
                    instance = fake.instances.get(target)
                    row = instance.row() if instance and instance.destroyed is None else None
                self._send(200, {"instances": row})
            elif method == "PUT" and scoped and target is not None:
                self._send(*fake.set_state(target, body))
            elif method == "DELETE" and scoped and target is not None:
                self._send(*fake.destroy(target))
            elif method == "GET" and path == "/api/v0/users/current/":
                self._send(
                    200, {"id": 1, "username": "fake", "credit": fake.credit, "balance": 0.0}
                )
            else:
                self._send(
                    404, {"success": False, "error": "not_found", "msg": f"{method} {parts.path}"}
                )

        def _search(self, query: dict[str, Any]) -> None:
            with fake._lock:
                rented = {i.offer["id"] for i in fake.instances.values() if i.destroyed is None}
                rows = [{**o, "rented": o["id"] in rented} for o in fake.offers.values()]
            try:
                found = [row for row in rows if matches(row, query)]
            except (ValueError, TypeError) as exc:
                self._send(400, {"success": False, "error": "bad_query", "msg": str(exc)})
                return
            for name, direction in reversed(query.get("order") or []):
                found.sort(key=_by(name), reverse=direction == "desc")
            if query.get("limit"):
                found = found[: int(query["limit"])]
            self._send(200, {"offers": found})

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._route("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

    return Handler
