"""Rents the boxes a batch needs on Vast.ai, replaces the ones lost or outbid, releases them.

    python -m deploy.autopilot up --count N --max-price USD [--gpu NAME]... \
        [--interruptible [--bid USD]] [--dry-run] [--env-file .env]
    python -m deploy.autopilot down [NAME... | --all] [--force]
    python -m deploy.autopilot status
    python -m deploy.autopilot watch --api URL [--api-key KEY] [--batch ID]

`up` searches offers (deploy.offers), rents the cheapest that fit, waits for SSH, deploys
each box with the deploy hook (today `./deploy_vast.sh --env-file BOX.env deploy`) and
records it in the fleet state folder (`.deploy/vast/`, or AUTOPILOT_DIR):

- `fleet.json`: per box its instance id, offer, GPU, price per hour, on-demand or
  interruptible, start and stop times, state; the ledger `status` and spend are read from.
- `fleet`: one `NAME NAME.env` line per live box, so `./deploy_vast.sh fleet status|logs|
  tunnel .deploy/vast/fleet` works on the rented boxes.
- `NAME.env`: the env file the box was deployed with (the base env file plus its host, port,
  BOX_NAME, BOX_PRICE_PER_HOUR, VAST_INSTANCE_ID and IDLE_RELEASE_MINUTES), mode 0600.

`down` destroys (never only stops: a stopped instance still bills its disk). `watch` keeps
a batch's boxes: a box that is gone (outbid, host lost, exited) is destroyed and replaced
while the batch has more work than the others finish soon, and every box is released when
the GPU queue has no work left for it; it ends with the total spend.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from deploy import offers as offer_filters
from deploy.console import DeployError
from deploy.settings import file_values
from deploy.vast import Instance, VastApi, VastError
from kernel.lifecycle import is_final
from kernel.periodic import FailureStretch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROGRAM = "./deploy_vast.sh"
DEFAULT_IMAGE = "ghcr.io/<owner>/<repo>:stable"
SSH_WAIT_SECONDS = 600.0
# Boxes rented by `up` release themselves after this long without work (0 turns it off).
DEFAULT_IDLE_RELEASE_MINUTES = 10
# drain: a read that keeps failing is said again this often; renting a box that failed is
# tried again after this long.
REMIND_SECONDS = 120.0
RENT_RETRY_SECONDS = 60.0
# A lost box is replaced while the batch's remaining work would take the remaining boxes
# longer than this; below it the boxes left finish sooner than a new one boots.
REPLACE_IF_LEFT_SECONDS = 300.0


class AutopilotError(Exception):
    """A one-line error for the user."""


def say(message: str) -> None:
    print(f"[autopilot] {message}", file=sys.stderr, flush=True)


def state_dir() -> Path:
    return Path(os.environ.get("AUTOPILOT_DIR") or PROJECT_ROOT / ".deploy" / "vast")


def read_env_file(path: Path) -> dict[str, str]:
    """The settings an env file sets, read as every deploy command reads them
    (deploy.settings.file_values: kernel.config, secrets left out)."""
    try:
        return file_values(path)
    except DeployError as exc:
        raise AutopilotError(str(exc)) from None


# The ledger -------------------------------------------------------------------------------


@dataclass
class Box:
    name: str
    instance_id: int
    offer_id: int
    gpu: str
    price_per_hour: float
    interruptible: bool
    started: float
    stopped: float | None = None
    state: str = "renting"  # renting, deploying, running, lost, released, failed
    host: str = ""
    port: int = 0
    env_file: str = ""
    mode: str = "hybrid"
    note: str = ""

    @property
    def kind(self) -> str:
        return "interruptible" if self.interruptible else "on-demand"

    @property
    def live(self) -> bool:
        return self.stopped is None

    def seconds(self, now: float | None = None) -> float:
        end = self.stopped if self.stopped is not None else (now or time.time())
        return max(0.0, end - self.started)

    def spend(self, now: float | None = None) -> float:
        """USD: the rented price x the time from creation to destroy."""
        return self.price_per_hour * self.seconds(now) / 3600.0


@dataclass
class Ledger:
    folder: Path
    boxes: dict[str, Box] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, folder: Path | None = None) -> Ledger:
        folder = folder or state_dir()
        ledger = cls(folder)
        path = folder / "fleet.json"
        if path.is_file():
            data = json.loads(path.read_text())
            ledger.boxes = {name: Box(**row) for name, row in data.get("boxes", {}).items()}
        return ledger

    def save(self) -> None:
        with self.lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o700)
            data = {"boxes": {name: asdict(box) for name, box in self.boxes.items()}}
            tmp = self.folder / "fleet.json.tmp"
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(self.folder / "fleet.json")
            lines = ["# boxes rented by the autopilot: ./deploy_vast.sh fleet status THIS_FILE"]
            lines += [
                f"{box.name} {Path(box.env_file).name}"
                for box in self.boxes.values()
                if box.live and box.env_file and box.state in ("running", "deploying")
            ]
            (self.folder / "fleet").write_text("\n".join(lines) + "\n")

    def put(self, box: Box) -> None:
        with self.lock:
            self.boxes[box.name] = box
        self.save()

    def live(self) -> list[Box]:
        return [box for box in self.boxes.values() if box.live]

    def total_spend(self, now: float | None = None) -> float:
        return sum(box.spend(now) for box in self.boxes.values())


# Deploying one box ------------------------------------------------------------------------

DeployHook = Callable[[Box, Path], tuple[int, str]]


def script_deploy(root: Path = PROJECT_ROOT) -> DeployHook:
    """The deploy hook that runs `root`'s `./deploy_vast.sh --env-file FILE deploy` (the
    checkout the boxes get), with the box's host and port also set in the environment (they
    win there)."""

    def deploy(box: Box, env_file: Path) -> tuple[int, str]:
        log = env_file.with_suffix(".deploy.log")
        env = {**os.environ, "VAST_HOST": box.host, "VAST_PORT": str(box.port)}
        env.pop("ENV_FILE", None)
        with open(log, "w") as out:
            completed = subprocess.run(
                [str(root / "deploy_vast.sh"), "--env-file", str(env_file), "deploy"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return completed.returncode, tail

    return deploy


# Deploys and health-gates one box exactly as `./deploy_vast.sh deploy` does.
deploy_with_script = script_deploy()


def ssh_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """The SSH server answers with its banner (a port that only accepts is not enough)."""
    if not host or not port:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@dataclass
class Plan:
    """What `up` and `watch` rent with: the filters, the image and the base env file."""

    needs: offer_filters.Needs
    image: str
    env_file: Path
    base: dict[str, str]
    idle_release_minutes: float = DEFAULT_IDLE_RELEASE_MINUTES
    ssh_wait: float = SSH_WAIT_SECONDS


def box_env_text(plan: Plan, box: Box) -> str:
    text = plan.env_file.read_text() if plan.env_file.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    extra = {
        "VAST_HOST": box.host,
        "VAST_PORT": str(box.port),
        "BOX_NAME": box.name,
        "BOX_PRICE_PER_HOUR": f"{box.price_per_hour:g}",
        "VAST_INSTANCE_ID": str(box.instance_id),
    }
    if "IDLE_RELEASE_MINUTES" not in plan.base:
        extra["IDLE_RELEASE_MINUTES"] = f"{plan.idle_release_minutes:g}"
    text += "# added by the autopilot for this rented box\n"
    text += "".join(f"{key}={value}\n" for key, value in extra.items())
    return text


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def release(api: VastApi, ledger: Ledger, box: Box, state: str, note: str = "") -> None:
    api.destroy(box.instance_id)
    box.stopped = time.time()
    box.state = state
    box.note = note or box.note
    ledger.put(box)


def rent_one(
    api: VastApi, ledger: Ledger, plan: Plan, offer: dict[str, Any], deploy: DeployHook
) -> Box:
    """Creates, waits for SSH, deploys. A box that does not come up is destroyed."""
    needs = plan.needs
    price = offer_filters.price(offer, needs)
    instance_id = api.create(
        int(offer["id"]),
        image=plan.image,
        disk_gb=needs.disk_gb,
        env={"IDLE_RELEASE_MINUTES": f"{plan.idle_release_minutes:g}"},
        label="llm-batch",
        bid=price if needs.interruptible else None,
    )
    box = Box(
        name=f"vast-{instance_id}",
        instance_id=instance_id,
        offer_id=int(offer["id"]),
        gpu=str(offer.get("gpu_name", "?")),
        price_per_hour=price,
        interruptible=needs.interruptible,
        started=time.time(),
        mode=plan.base.get("DEPLOY_MODE", "hybrid"),
    )
    ledger.put(box)
    say(f"{box.name}: rented offer {box.offer_id} ({box.gpu}, ${price:g}/h {box.kind})")
    deadline = time.monotonic() + plan.ssh_wait
    instance: Instance | None = None
    while time.monotonic() < deadline:
        instance = api.show(instance_id)
        if (
            instance is not None
            and instance.status == "running"
            and ssh_answers(instance.ssh_host, instance.ssh_port)
        ):
            break
        time.sleep(1.0)
    else:
        release(api, ledger, box, "failed", "SSH never came up")
        seen = f"last state {instance.status}" if instance else "instance vanished"
        raise AutopilotError(
            f"{box.name}: SSH never came up within {plan.ssh_wait:.0f}s ({seen}); "
            f"instance {instance_id} destroyed, nothing left billing"
        )
    box.host, box.port = instance.ssh_host, instance.ssh_port
    env_file = ledger.folder / f"{box.name}.env"
    write_private(env_file, box_env_text(plan, box))
    box.env_file = str(env_file)
    box.state = "deploying"
    ledger.put(box)
    say(f"{box.name}: SSH up at {box.host}:{box.port}; deploying")
    rc, tail = deploy(box, env_file)
    if rc != 0:
        release(api, ledger, box, "failed", f"deploy exit {rc}")
        raise AutopilotError(
            f"{box.name}: deploy failed (exit {rc}); instance destroyed. Last lines:\n{tail}"
        )
    box.state = "running"
    ledger.put(box)
    say(f"{box.name}: deployed and healthy")
    return box


def find_offers(api: VastApi, needs: offer_filters.Needs) -> list[dict[str, Any]]:
    found = api.search_offers(offer_filters.query(needs), needs.interruptible, needs.disk_gb)
    chosen = offer_filters.choose(found, needs)
    if not chosen:
        everything = api.search_offers({}, needs.interruptible, needs.disk_gb)
        raise AutopilotError(f"no offer fits: {offer_filters.why_empty(everything, needs)}")
    return chosen


def offers_table(chosen: list[dict[str, Any]], needs: offer_filters.Needs) -> str:
    rows = [
        (
            str(o["id"]),
            str(o.get("gpu_name", "?")),
            f"{float(o.get('gpu_ram') or 0) / 1000:.0f} GB",
            f"{float(o.get('reliability2') or 0):.3f}",
            str(o.get("geolocation", "")),
            f"${offer_filters.price(o, needs):.3f}/h",
        )
        for o in chosen
    ]
    return table(("OFFER", "GPU", "GPU RAM", "RELIABILITY", "WHERE", "PRICE"), rows)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [headers, *rows]
    )


def up(api: VastApi, plan: Plan, dry_run: bool, deploy: DeployHook = deploy_with_script) -> int:
    needs = plan.needs
    chosen = find_offers(api, needs)
    hourly = sum(offer_filters.price(o, needs) for o in chosen)
    print(offers_table(chosen, needs))
    kind = "interruptible" if needs.interruptible else "on-demand"
    print(f"{len(chosen)} box(es) {kind}: ${hourly:.3f}/h in total")
    if len(chosen) < needs.count:
        say(f"only {len(chosen)} of the {needs.count} boxes asked for fit")
    if dry_run:
        say("dry run: nothing rented")
        return 0
    if api.credit() <= 0:
        raise AutopilotError("the Vast.ai account lacks credit: add credit, then run up again")
    ledger = Ledger.load()
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        futures = [pool.submit(rent_one, api, ledger, plan, o, deploy) for o in chosen]
        for future in futures:
            try:
                future.result()
            except (AutopilotError, VastError) as exc:
                errors.append(str(exc))
    for error in errors:
        say(f"error: {error}")
    running = [b for b in ledger.live() if b.state == "running"]
    print(
        f"{len(running)} box(es) running at ${sum(b.price_per_hour for b in running):.3f}/h; "
        f"fleet file {ledger.folder / 'fleet'}"
    )
    return 1 if errors else 0


# Releasing --------------------------------------------------------------------------------

BatchesOnBox = Callable[[Box], list[str] | None]


def batches_with_script(box: Box) -> list[str] | None:
    """Batch ids in the box's own bucket (standalone keeps results there); None when the
    box cannot be asked."""
    settings = read_env_file(Path(box.env_file))
    venv = settings.get("INSTANCE_VENV", "/opt/venv")
    completed = subprocess.run(
        [
            str(PROJECT_ROOT / "deploy_vast.sh"),
            "--env-file",
            box.env_file,
            "ssh",
            f"{venv}/bin/python -m workers.autostop batches",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        return None
    return [line.strip() for line in completed.stdout.splitlines() if line.strip()]


def down(
    api: VastApi,
    names: list[str],
    everything: bool,
    force: bool,
    batches: BatchesOnBox = batches_with_script,
) -> int:
    ledger = Ledger.load()
    live = {box.name: box for box in ledger.live()}
    if everything:
        targets = list(live.values())
    else:
        unknown = [name for name in names if name not in live]
        if unknown:
            raise AutopilotError(
                f"no live rented box named {', '.join(unknown)} (live: {', '.join(live) or 'none'})"
            )
        targets = [live[name] for name in names]
    if not targets:
        say("no rented box is live")
        return 0
    refused = 0
    for box in targets:
        if api.show(box.instance_id) is None:
            # Destroyed elsewhere (its autostop, the website): nothing left to destroy; its
            # spend is counted until now, the latest it can have ended.
            box.stopped, box.state, box.note = time.time(), "gone", "destroyed elsewhere"
            ledger.put(box)
            say(f"{box.name}: already destroyed (autostop or by hand); recorded as gone")
            continue
        if box.mode == "standalone" and not force:
            at_stake = batches(box)
            what = (
                f"batches {', '.join(at_stake)}"
                if at_stake
                else ("no batch" if at_stake == [] else "its batches (the box did not answer)")
            )
            if at_stake == []:
                pass  # nothing stored there: nothing to lose
            else:
                refused += 1
                say(
                    f"error: {box.name} runs standalone and holds the only copy of {what}: "
                    "copy the outputs off first, or pass --force to destroy it anyway"
                )
                continue
        release(api, ledger, box, "released", "down")
        say(f"{box.name}: destroyed after {box.seconds() / 60:.1f} min, ${box.spend():.4f}")
    print(f"total spend of the rented boxes: ${ledger.total_spend():.4f}")
    return 1 if refused else 0


def status(api: VastApi | None) -> int:
    ledger = Ledger.load()
    now = time.time()
    rows = []
    for box in ledger.boxes.values():
        state = box.state
        if box.live and api is not None:
            try:
                instance = api.show(box.instance_id)
                state = "gone" if instance is None else f"{box.state}/{instance.status}"
            except VastError as exc:
                state = f"{box.state}/? ({exc})"[:40]
        rows.append(
            (
                box.name,
                f"{box.offer_id} {box.gpu}",
                f"${box.price_per_hour:.3f}",
                box.kind,
                f"{box.seconds(now) / 60:.1f} min",
                f"${box.spend(now):.4f}",
                state,
            )
        )
    print(table(("BOX", "OFFER", "$/H", "KIND", "UPTIME", "SPEND", "STATE"), rows))
    print(f"total spend: ${ledger.total_spend(now):.4f}")
    return 0


# Watching a batch -------------------------------------------------------------------------


@dataclass
class Progress:
    """What the API says about the batch and the GPU queue."""

    left: int  # requests of the batch not done yet
    done: bool
    backlog: int  # GPU-queue tasks waiting for a worker
    rates: dict[str, float]  # box name -> requests/s
    busy: dict[str, bool]  # box name -> requests in flight on it
    # False while the batch is `validating`: its lines are not counted yet, so `left` (0
    # then) says nothing; the batch still has all its work ahead.
    counted: bool = True

    @property
    def finished(self) -> bool:
        """The batch has no work left for any box: ended, or every line counted done."""
        return self.done or (self.counted and self.left <= 0)


def should_replace(progress: Progress, remaining: list[str], per_box_rate: float) -> bool:
    """Replace a lost box while the boxes left need longer than REPLACE_IF_LEFT_SECONDS."""
    if progress.finished:
        return False
    if not progress.counted:
        return True
    rate = sum(progress.rates.get(name, 0.0) for name in remaining)
    if rate <= 0:
        rate = per_box_rate * len(remaining)
    if rate <= 0:
        return True
    return progress.left / rate > REPLACE_IF_LEFT_SECONDS


def idle_boxes(progress: Progress, boxes: list[str]) -> list[str]:
    """Boxes the GPU queue has no work for: nothing waiting and nothing in flight there,
    and the batch finished (a batch still validating has all its shards ahead)."""
    if not progress.finished or (progress.backlog > 0 and not progress.done):
        return []
    return [name for name in boxes if not progress.busy.get(name, False)]


class BatchUnreadable(AutopilotError):
    """The batch API did not answer this time (a closed tunnel, a restart): try again."""


def read_progress(api_url: str, api_key: str, batch_id: str | None) -> Progress:
    """The batch's and the GPU queue's state from the API. A wrong key or an unknown batch
    raises AutopilotError; anything that may pass (no answer, a 5xx) BatchUnreadable."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=api_url, headers=headers, timeout=15) as client:
            queues = client.get("/queues").raise_for_status().json()
            batch = client.get(f"/batch/{batch_id}").raise_for_status().json() if batch_id else None
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        if code in (401, 403, 404):
            raise AutopilotError(f"{api_url}: HTTP {code} for {exc.request.url.path}") from None
        raise BatchUnreadable(f"HTTP {code} from {api_url}") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise BatchUnreadable(f"{api_url}: {exc}") from None
    left, done, counted = 0, True, True
    if batch is not None:
        counts = batch.get("request_counts") or {}
        left = (
            int(counts.get("total", 0))
            - int(counts.get("completed", 0))
            - int(counts.get("failed", 0))
        )
        done = bool(batch.get("is_terminal", is_final(str(batch.get("status")))))
        # Until its input is split a batch shows 0 of 0 requests: not "nothing left".
        counted = batch.get("status") != "validating"
    backlog = sum(
        int(q.get("backlog") or 0) for name, q in queues.get("queues", {}).items() if "gpu" in name
    )
    rates = {b["box"]: float(b.get("requests_per_s") or 0.0) for b in queues.get("boxes", [])}
    busy = {b["box"]: int(b.get("in_flight") or 0) > 0 for b in queues.get("boxes", [])}
    return Progress(left, done, backlog, rates, busy, counted)


def _rent_replacement(
    api: VastApi, ledger: Ledger, plan: Plan, deploy: DeployHook, why: str
) -> bool:
    try:
        chosen = find_offers(api, plan.needs)
        rent_one(api, ledger, plan, chosen[0], deploy)
        return True
    except (AutopilotError, VastError) as exc:
        say(f"error: {why}: {exc}")
        return False


def watch(
    api: VastApi,
    plan: Plan | None,
    progress: Callable[[], Progress],
    interval: float = 5.0,
    deploy: DeployHook = deploy_with_script,
    per_box_rate: float = 0.0,
) -> float:
    """Until the batch is done and every box released: replace lost boxes while there is
    more work than the others finish soon, release idle ones. Returns the total spend.

    A round whose batch API or Vast API read fails changes nothing and is retried after
    `interval` (a closed tunnel, a Vast hiccup): the loop never exits on one; the boxes'
    own autostop still bounds what a drain that cannot see its batch pays."""
    ledger = Ledger.load()
    batch_api, vast_api = (
        FailureStretch(f"warning: cannot read {what}", say, REMIND_SECONDS)
        for what in ("the batch API", "the Vast API")
    )
    next_rent_try = 0.0
    while True:
        try:
            now = progress()
        except BatchUnreadable as exc:
            batch_api.failed(exc)
            time.sleep(interval)
            continue
        batch_api.worked()
        try:
            shown = {box.instance_id: api.show(box.instance_id) for box in ledger.live()}
        except VastError as exc:
            vast_api.failed(exc)
            time.sleep(interval)
            continue
        vast_api.worked()
        for box in ledger.live():
            instance = shown.get(box.instance_id)
            if instance is None or instance.gone:
                why = "destroyed elsewhere" if instance is None else f"{instance.status}"
                say(f"{box.name}: lost ({why}); destroying it")
                release(api, ledger, box, "lost", why)
                others = [b.name for b in ledger.live()]
                if plan is not None and should_replace(now, others, per_box_rate):
                    say(f"replacing {box.name}: {now.left} request(s) left")
                    if not _rent_replacement(api, ledger, plan, deploy, f"replacing {box.name}"):
                        next_rent_try = time.monotonic() + RENT_RETRY_SECONDS
        # Every box gone while the batch has work (a replacement that could not be rented):
        # keep trying, or the batch would wait with nothing to run it.
        if (
            plan is not None
            and not ledger.live()
            and not now.finished
            and time.monotonic() >= next_rent_try
            and any(b.state == "lost" for b in ledger.boxes.values())
        ):
            say(f"no box left and {now.left} request(s) to go: renting one")
            if not _rent_replacement(api, ledger, plan, deploy, "renting a box"):
                next_rent_try = time.monotonic() + RENT_RETRY_SECONDS
        for name in idle_boxes(now, [b.name for b in ledger.live() if b.state == "running"]):
            box = ledger.boxes[name]
            say(f"{name}: no work left on the GPU queue; destroying it")
            release(api, ledger, box, "released", "idle")
        if now.done and not ledger.live():
            total = ledger.total_spend()
            print(f"batch done; total spend ${total:.4f}")
            return total
        time.sleep(interval)


# Command line -----------------------------------------------------------------------------


def build_plan(options: argparse.Namespace) -> Plan:
    env_file = Path(options.env_file)
    base = read_env_file(env_file)
    parallel = int(base.get("LLAMA_PARALLEL") or 4)
    ctx = int(base.get("LLAMA_CTX_PER_SLOT") or 2048)
    gpu_ram = options.gpu_ram or offer_filters.gpu_ram_for_model(
        base.get("LLAMA_MODEL", ""), parallel, ctx
    )
    needs = offer_filters.Needs(
        count=options.count,
        max_price=options.max_price,
        gpu_names=list(options.gpu or []),
        gpu_ram_gb=gpu_ram,
        cuda=options.cuda,
        disk_gb=options.disk,
        reliability=options.reliability,
        interruptible=options.interruptible,
        bid=options.bid,
    )
    image = os.environ.get("VAST_IMAGE") or base.get("VAST_IMAGE") or DEFAULT_IMAGE
    idle = float(base.get("IDLE_RELEASE_MINUTES") or DEFAULT_IDLE_RELEASE_MINUTES)
    return Plan(needs, image, env_file, base, idle, options.ssh_wait)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the command, exit status 2."""

    def error(self, message: str) -> NoReturn:
        say(f"error: {self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog=PROGRAM, description="Rent, watch and release Vast.ai boxes for a batch.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    rent = sub.add_parser(
        "up",
        help="rent N boxes, deploy each, record them",
        description="Rent the cheapest Vast.ai offers that fit, deploy and health-gate each, "
        "record them in the fleet file (docs/autopilot.md).",
    )
    watch_cmd = sub.add_parser(
        "drain",
        aliases=["watch"],
        help="replace lost boxes, release idle ones",
        description="Follow a batch: replace lost or outbid boxes while it has work, release "
        "boxes the GPU queue has no work for, print the total spend.",
    )
    for p in (rent, watch_cmd):
        p.add_argument("--count", type=int, default=1, help="boxes to rent (default 1)")
        p.add_argument(
            "--max-price", type=float, default=math.inf, help="USD per hour a box (default: any)"
        )
        p.add_argument("--gpu", action="append", help="GPU name, e.g. RTX_4090 (repeatable)")
        p.add_argument("--interruptible", action="store_true", help="bid (interruptible) boxes")
        p.add_argument("--bid", type=float, help="USD per hour (default min_bid + 10%%)")
        p.add_argument("--gpu-ram", type=float, help="GB (default: model + context estimate)")
        p.add_argument(
            "--cuda",
            type=float,
            default=offer_filters.IMAGE_CUDA,
            help="lowest CUDA version a host must offer (default %(default)s, the image's)",
        )
        p.add_argument(
            "--disk",
            type=float,
            default=offer_filters.DEFAULT_DISK_GB,
            help="GB of disk a box gets (default %(default)s)",
        )
        p.add_argument(
            "--reliability",
            type=float,
            default=offer_filters.DEFAULT_RELIABILITY,
            help="lowest host reliability, 0 to 1 (default %(default)s)",
        )
        p.add_argument(
            "--env-file",
            default=os.environ.get("ENV_FILE", ".env"),
            help="settings of the boxes (default %(default)s)",
        )
        p.add_argument(
            "--ssh-wait",
            type=float,
            default=SSH_WAIT_SECONDS,
            help="seconds to wait for a box's SSH before destroying it (default %(default)s)",
        )
    rent.add_argument("--dry-run", action="store_true", help="print the offers, rent nothing")
    watch_cmd.add_argument(
        "--api", required=True, help="the batch API's base URL, e.g. http://127.0.0.1:18000"
    )
    watch_cmd.add_argument(
        "--api-key", default=os.environ.get("API_KEY", ""), help="its API_KEY (default $API_KEY)"
    )
    watch_cmd.add_argument("--batch", help="batch id to drain")
    watch_cmd.add_argument(
        "--interval", type=float, default=5.0, help="seconds between looks (default %(default)s)"
    )
    release_cmd = sub.add_parser(
        "down",
        help="destroy rented boxes",
        description="Destroy rented boxes (destroy, never only stop: a stopped instance still "
        "bills its disk).",
    )
    release_cmd.add_argument("names", nargs="*", metavar="NAME", help="boxes to destroy")
    release_cmd.add_argument("--all", action="store_true", help="every live rented box")
    release_cmd.add_argument(
        "--force",
        action="store_true",
        help="also a standalone box holding the only copy of its batches' results",
    )
    sub.add_parser(
        "boxes",
        aliases=["status"],
        help="per box: offer, price, kind, uptime, spend, state",
        description="The rented boxes: offer, price per hour, kind, uptime, spend, state.",
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    api_url = getattr(options, "api", None)
    if api_url is not None and not api_url.startswith(("http://", "https://")):
        say(f"error: {PROGRAM} drain: --api {api_url!r} is not a URL (http://HOST:PORT)")
        return 2
    if options.command == "down" and not options.names and not options.all:
        say(f"error: {PROGRAM} down: name the boxes to destroy, or pass --all")
        return 2
    try:
        if options.command in ("boxes", "status"):
            try:
                api: VastApi | None = VastApi()
            except VastError:
                api = None
            return status(api)
        api = VastApi()
        if options.command == "up":
            if options.bid is not None and not options.interruptible:
                raise AutopilotError("--bid needs --interruptible")
            return up(api, build_plan(options), options.dry_run)
        if options.command == "down":
            return down(api, options.names, options.all, options.force)
        plan = build_plan(options)
        watch(
            api,
            plan,
            lambda: read_progress(options.api, options.api_key, options.batch),
            options.interval,
        )
        return 0
    except (AutopilotError, VastError) as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
