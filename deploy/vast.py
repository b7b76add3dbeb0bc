"""The Vast.ai API as the deploy package uses it: a thin wrapper over the official SDK
(`vastai`, pinned in requirements.txt), so every call, field and error the project relies on
is in this one file.

REST paths the SDK (1.9.1) sends, relative to its server (`VAST_URL`, default
https://console.vast.ai):

- search offers: `search_offers(query=dict, type=, order=, storage=)`,
  `POST /api/v0/bundles/`
- create: `create_instance(offer, image=, disk=, env=, label=, bid_price=, ssh=, direct=)`,
  `PUT /api/v0/asks/{offer}/`, answering `{"success", "new_contract"}`
- show one: `show_instance(id)`, `GET /api/v0/instances/{id}/?owner=me`
- list: `show_instances()`, `GET /api/v1/instances/` (pages)
- stop: `stop_instance(id)`, `PUT /api/v0/instances/{id}/` with `{"state": "stopped"}`
- destroy: `destroy_instance(id)`, `DELETE /api/v0/instances/{id}/`
- credit: `show_user()`, `GET /api/v0/users/current` (`credit`)

Every SDK error (`requests.HTTPError`, a connection error) becomes a `VastError` whose
message is one line a user can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import requests

# What each instance's `actual_status` means to us (Vast's documented values).
RUNNING = "running"
GONE_STATES = frozenset({"exited", "offline", "unknown", "stopped"})


class VastError(Exception):
    """A Vast.ai call failed; the message says what to do."""


class NoApiKey(VastError):
    pass


class NoCredit(VastError):
    pass


class CreationRefused(VastError):
    pass


def server_url() -> str:
    return os.environ.get("VAST_URL") or "https://console.vast.ai"


@dataclass
class Instance:
    """The fields of an instance row the autopilot reads."""

    id: int
    status: str  # actual_status: None (provisioning), loading, running, exited, offline...
    intended: str
    ssh_host: str
    ssh_port: int
    price_per_hour: float
    interruptible: bool
    label: str
    raw: dict[str, Any]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Instance:
        host, port = direct_ssh(row)
        return cls(
            id=int(row["id"]),
            status=str(row.get("actual_status") or "provisioning"),
            intended=str(row.get("intended_status") or ""),
            ssh_host=host,
            ssh_port=port,
            price_per_hour=float(row.get("dph_total") or 0.0),
            interruptible=bool(row.get("is_bid")),
            label=str(row.get("label") or ""),
            raw=row,
        )

    @property
    def gone(self) -> bool:
        """Outbid (paused by the host), host offline, or exited: it serves nothing."""
        return self.status in GONE_STATES


def direct_ssh(row: dict[str, Any]) -> tuple[str, int]:
    """Host and port of the instance's direct SSH: `public_ipaddr` and the host port mapped
    to 22/tcp in `ports`; the proxy (`ssh_host`, `ssh_port`) when no direct port is mapped."""
    ports = row.get("ports") or {}
    mapped = ports.get("22/tcp") if isinstance(ports, dict) else None
    if mapped and row.get("public_ipaddr"):
        try:
            return str(row["public_ipaddr"]).strip(), int(mapped[0]["HostPort"])
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    port = row.get("ssh_port")
    return str(row.get("ssh_host") or ""), int(port) if port else 0


def _message(exc: requests.HTTPError) -> str:
    response = exc.response
    if response is None:
        return str(exc)
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if isinstance(body, dict):
        text = body.get("msg") or body.get("error") or body.get("detail") or body
        return f"HTTP {response.status_code}: {text}"
    return f"HTTP {response.status_code}: {body}"


def _is_credit_error(exc: requests.HTTPError) -> bool:
    response = exc.response
    if response is None:
        return False
    return response.status_code == 402 or "credit" in response.text.lower()


class VastApi:
    """One account on one Vast server (the key from VAST_API_KEY or the SDK's files)."""

    def __init__(self, api_key: str | None = None, url: str | None = None) -> None:
        from vastai import VastAI  # the SDK prints on import errors; load it only when used

        self.url = url or server_url()
        try:
            self.sdk = VastAI(api_key=api_key, server_url=self.url, retry=3, raw=True, quiet=True)
        except RuntimeError as exc:
            raise NoApiKey(
                "no Vast.ai API key: set VAST_API_KEY or save it with "
                "'vastai set api-key KEY' (~/.config/vastai/vast_api_key)"
            ) from exc

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise VastError(
                    f"{what}: the Vast.ai API key was refused ({_message(exc)}); check VAST_API_KEY"
                ) from exc
            if _is_credit_error(exc):
                raise NoCredit(
                    f"{what}: the account lacks credit ({_message(exc)}); add credit on Vast.ai"
                ) from exc
            raise VastError(f"{what}: {_message(exc)}") from exc
        except requests.RequestException as exc:
            raise VastError(f"{what}: cannot reach {self.url}: {exc}") from exc

    def credit(self) -> float:
        """The account's credit in USD (`credit` of users/current)."""
        user = self._call("reading the account", self.sdk.show_user)
        try:
            return float(user.get("credit") or 0.0)
        except (AttributeError, TypeError, ValueError):
            return 0.0

    def search_offers(
        self, query: dict[str, Any], interruptible: bool, disk_gb: float
    ) -> list[dict[str, Any]]:
        """Offers matching `query` (the API's `{"field": {"op": value}}` form), cheapest
        first. The defaults the SDK adds (verified, rentable, not rented) stay on."""
        offers = self._call(
            "searching offers",
            self.sdk.search_offers,
            query=dict(query),
            type="bid" if interruptible else "on-demand",
            order="dph_total",
            storage=disk_gb,
        )
        return [offer for offer in offers or [] if isinstance(offer, dict)]

    def create(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        env: dict[str, str],
        label: str,
        bid: float | None,
    ) -> int:
        """Rents an offer; returns the new instance's id. `bid` makes it interruptible."""
        try:
            answer = self.sdk.create_instance(
                offer_id,
                image=image,
                disk=disk_gb,
                env=env,
                label=label,
                bid_price=bid,
                ssh=True,
                direct=True,
            )
        except requests.HTTPError as exc:
            if _is_credit_error(exc):
                raise NoCredit(
                    f"renting offer {offer_id}: the account lacks credit ({_message(exc)}); "
                    "add credit on Vast.ai"
                ) from exc
            raise CreationRefused(
                f"renting offer {offer_id} was refused ({_message(exc)}); "
                "it may have been taken: run 'up' again"
            ) from exc
        except requests.RequestException as exc:
            raise VastError(f"renting offer {offer_id}: cannot reach {self.url}: {exc}") from exc
        if (
            not isinstance(answer, dict)
            or not answer.get("success")
            or not answer.get("new_contract")
        ):
            raise CreationRefused(f"renting offer {offer_id} was refused: {answer}")
        return int(answer["new_contract"])

    def show(self, instance_id: int) -> Instance | None:
        """The instance, or None once it is destroyed."""
        try:
            row = self.sdk.show_instance(instance_id)
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return None
            self._call(f"reading instance {instance_id}", _raise, exc)
            return None
        except requests.RequestException as exc:
            raise VastError(
                f"reading instance {instance_id}: cannot reach {self.url}: {exc}"
            ) from exc
        return Instance.from_row(row) if row else None

    def instances(self) -> list[Instance]:
        rows = self._call("listing instances", self.sdk.show_instances)
        return [Instance.from_row(row) for row in rows or []]

    def stop(self, instance_id: int) -> None:
        """Stops the instance: its GPU is freed but its disk still bills."""
        self._call(f"stopping instance {instance_id}", self.sdk.stop_instance, instance_id)

    def destroy(self, instance_id: int) -> None:
        """Destroys the instance and its disk: the meter stops. Destroying one already gone
        is not an error."""
        try:
            self.sdk.destroy_instance(instance_id)
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return
            self._call(f"destroying instance {instance_id}", _raise, exc)
        except requests.RequestException as exc:
            raise VastError(
                f"destroying instance {instance_id}: cannot reach {self.url}: {exc}"
            ) from exc


def _raise(exc: Exception) -> None:
    raise exc
