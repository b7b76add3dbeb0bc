"""The subcommands of `./deploy_vast.sh`: one function and one registration each.

Each is a thin sequence of the phases in the modules beside this one; the order of the
registrations is the order of `--help`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess

from deploy import fleet
from deploy.cli import Context, Run, command
from deploy.console import PROGRAM_NAME, DeployError, log, out, sq
from deploy.converge import converge
from deploy.preflight import preflight, prepare_ssh
from deploy.remote import NOT_DEPLOYED, SSH_LOST
from deploy.settings import PROGRAMS, DeploySettings, image_hint
from deploy.sync import sync_code, upload_env
from deploy.tunnel import forwards, run_tunnel
from kernel.config import mode_line

OFFER_QUERY = (
    "gpu_name in [RTX_3090,RTX_4090] num_gpus=1 gpu_ram>=24 disk_space>=50 "
    "reliability>0.98 rentable=true"
)


def explain_remote_status(rc: int, settings: DeploySettings) -> int:
    """The remote status of `status`, `logs` or `ssh`; dies when nothing is deployed."""
    if rc == NOT_DEPLOYED:
        raise DeployError(
            f"nothing is deployed in {settings.remote_dir} on {settings.where}: "
            f"run {PROGRAM_NAME} first"
        )
    return rc


def summary(ctx: Context, done: str) -> str:
    settings = ctx.settings
    stack = settings.stack
    flag = settings.env_file_flag
    verb = "Dry run for" if ctx.dry_run else "Deployed"
    tunnel = " ".join(forwards(settings).args[2:])
    head = f"{verb} {settings.where}:{settings.remote_dir} (mode {settings.mode})"
    return f"""{head} in {ctx.elapsed()}
  done:        {done}
  tunnel:      {PROGRAM_NAME}{flag} tunnel
               (ssh -N -p {settings.port} -i {settings.ssh_key} {tunnel} {settings.target})
  then open:   API docs    http://127.0.0.1:{stack.TUNNEL_API_PORT}/docs
               dashboard   http://127.0.0.1:{stack.TUNNEL_WEB_PORT}/
               S3 console  http://127.0.0.1:{stack.TUNNEL_S3_CONSOLE_PORT}/
  status:      {PROGRAM_NAME}{flag} status
  logs:        {PROGRAM_NAME}{flag} logs fastapi -f"""


@command(
    "deploy",
    "(default) preflight, sync code to REMOTE_DIR, start or restart what\n"
    "changed, wait until /health is ok, print a summary",
)
def deploy(ctx: Context, args: argparse.Namespace) -> int:
    remote = ctx.remote
    preflight(remote)
    ctx.lock.acquire()
    changed = sync_code(remote)
    env = upload_env(remote)
    done = converge(remote, [*changed, *([".env"] if env.changed else [])])
    ctx.lock.release()
    out(summary(ctx, done))
    return 0


STATUS = """in_project >/dev/null
echo "${REMOTE_DIR} (mode ${DEPLOY_MODE})"
exec "$PYTHON" -m deploy.instance.health status
"""


@command("status", "supervisord programs and the /health summary of the instance")
def status(ctx: Context, args: argparse.Namespace) -> int:
    settings = ctx.settings
    prepare_ssh(settings)
    ctx.remote.connect()
    rc = ctx.remote.run("status", STATUS)
    if rc == SSH_LOST:
        raise DeployError(f"lost the SSH connection to {settings.where}")
    if explain_remote_status(rc, settings) != 0:
        raise DeployError(f"the stack on {settings.where} is not healthy (see above)")
    return 0


LOGS = """in_project >/dev/null
if [[ -n "$program" ]]; then
  files=("${LOG_DIR}/${program}.log")
  [[ -f "${files[0]}" ]] || { echo "no log yet at ${files[0]}" >&2; exit 4; }
else
  shopt -s nullglob
  files=("${LOG_DIR}"/*.log)
  ((${#files[@]})) || { echo "no logs yet in ${LOG_DIR}" >&2; exit 4; }
fi
if ((follow)); then exec tail -n "$lines" -F "${files[@]}"; fi
exec tail -n "$lines" "${files[@]}"
"""
NO_LOG = 4


def _lines(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError("needs a number of lines")
    return int(value)


def logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("program", nargs="?", default="")
    parser.add_argument("-f", "--follow", action="store_true")
    parser.add_argument("-n", "--lines", type=_lines, default=100)


def logs_script(program: str, lines: int, follow: bool) -> str:
    return f"program={shlex.quote(program)}\nlines={lines}\nfollow={int(follow)}\n" + LOGS


@command(
    "logs",
    f"tail a program's log ({' '.join(PROGRAMS)} supervisord);\n"
    "without PROGRAM, the last lines of every log",
    usage="logs [PROGRAM] [-f] [-n LINES]",
    arguments=logs_arguments,
)
def logs(ctx: Context, args: argparse.Namespace) -> int:
    program: str = args.program
    if program and program not in (*PROGRAMS, "supervisord"):
        raise DeployError(
            f"logs: unknown program '{program}'; one of: {' '.join(PROGRAMS)} supervisord"
        )
    settings = ctx.settings
    prepare_ssh(settings)
    ctx.remote.connect()
    rc = ctx.remote.attached(
        f"logs {program or '(all)'}", logs_script(program, args.lines, args.follow)
    )
    if rc == NO_LOG:
        raise DeployError(
            f"logs: no log yet for {program or 'any program'} on {settings.where} "
            "(nothing has run there yet)"
        )
    return explain_remote_status(rc, settings)


@command(
    "tunnel",
    "forward the instance's API, dashboard and S3 console to this machine;\n"
    "in hybrid mode also expose this machine's Temporal and S3 to the instance",
)
def tunnel(ctx: Context, args: argparse.Namespace) -> int:
    prepare_ssh(ctx.settings)
    return run_tunnel(ctx.remote)


STOP = """in_project >/dev/null
scripts/stop_services.sh </dev/null
"""


@command("stop", "stop every service on the instance (data is kept)")
def stop(ctx: Context, args: argparse.Namespace) -> int:
    settings = ctx.settings
    prepare_ssh(settings)
    ctx.remote.connect()
    ctx.lock.acquire()
    if ctx.dry_run:
        ctx.remote.run("stop every service", STOP)
        return 0
    rc = ctx.remote.run("stop every service", STOP, lambda line: log(f"  {line}"))
    if rc != 0:
        raise DeployError(f"stopping the services on {settings.where} failed (see above)")
    ctx.lock.release()
    data = str(settings.stack.DATA_DIR)
    if not data.startswith("/"):
        data = f"{settings.remote_dir}/{data.removeprefix('./')}"
    log(f"stopped the services on {settings.where} (data in {data} is kept)")
    return 0


def ssh_script(words: list[str]) -> str:
    if words:
        return f'cd -- "$REMOTE_DIR" && exec {shlex.join(words)}'
    return 'cd -- "$REMOTE_DIR" 2>/dev/null || cd; exec "${SHELL:-bash}" -l'


@command(
    "ssh",
    "open a shell in REMOTE_DIR on the instance, or run CMD there",
    usage="ssh [CMD...]",
    rest=True,
)
def ssh(ctx: Context, args: argparse.Namespace) -> int:
    prepare_ssh(ctx.settings)
    ctx.remote.connect()
    # The remote command's own exit status is passed on.
    return ctx.remote.attached("shell", ssh_script(args.rest))


@command(
    "offers",
    "print (and run, when the vastai CLI is installed) a search for\nsuitable Vast.ai offers",
    settings=False,
)
def offers(ctx: Context, args: argparse.Namespace) -> int:
    # Settings are optional here: VAST_IMAGE if the file (or the environment) names one.
    try:
        configured = ctx.settings.stack.VAST_IMAGE
    except DeployError:
        configured = os.environ.get("VAST_IMAGE", "")
    image = image_hint(configured)
    out("Recommended: one RTX 3090 or 4090 (24 GB), at least 50 GB of disk, the project's image.")
    out(f"  vastai search offers {sq(OFFER_QUERY)} -o dph_total")
    out(f"  vastai create instance OFFER_ID --image {sq(image)} --disk 50 --ssh --direct")
    if shutil.which("vastai") is None:
        out("(the vastai CLI is not installed: pip install vastai, then vastai set api-key KEY)")
        return 0
    if ctx.dry_run:
        out("[dry-run] would run the search above")
        return 0
    return subprocess.run(
        ["vastai", "search", "offers", OFFER_QUERY, "-o", "dph_total"], check=False
    ).returncode


@command(
    "check",
    "check the settings (nothing is contacted) and print what the instance\n"
    "will run: mode, programs, model, ports",
)
def check(ctx: Context, args: argparse.Namespace) -> int:
    settings = ctx.settings
    stack = settings.stack
    model = stack.LLAMA_MODEL or "(none: no llama-server; set LLAMA_MODEL)"
    out(f"settings ok: {settings.env_file}")
    out(f"  instance   {settings.where}:{settings.remote_dir}  key {settings.ssh_key}")
    out(f"  mode       {mode_line(stack)}")
    out(f"  model      {model}  slots {stack.LLAMA_PARALLEL}")
    out(f"  API        instance 127.0.0.1:{stack.API_PORT} -> this machine {stack.TUNNEL_API_PORT}")
    out(f"  runtime    {stack.INSTANCE_VENV}  (the image's; never pip-installed by a deploy)")
    if stack.DEPLOY_MODE == "hybrid":
        out(
            f"  Temporal   {stack.TEMPORAL_ADDRESS}  S3 {stack.MINIO_ENDPOINT}  "
            "(elsewhere; ./deploy_vast.sh tunnel forwards loopback ones from this machine)"
        )
    return 0


@command(
    "fleet",
    "the same on every instance of a fleet file, in parallel, with one\n"
    'summary table (deploy/fleet.py; README "Fleet")',
    usage="fleet deploy|status|logs|stop|tunnel FLEETFILE",
    settings=False,
    rest=True,
)
def fleet_command(ctx: Context, args: argparse.Namespace) -> int:
    return fleet.main([*(["--dry-run"] if ctx.dry_run else []), *args.rest])


def _autopilot(name: str, ctx: Context, words: list[str]) -> int:
    """Renting commands run deploy.autopilot, which takes the global flags as its own."""
    from deploy import autopilot  # the vastai SDK is imported only by these commands

    takes_env = name in ("up", "drain")
    flags = ["--env-file", str(ctx.env_file)] if ctx.env_file_given and takes_env else []
    if ctx.dry_run and name == "up":
        flags.append("--dry-run")
    elif ctx.dry_run:
        raise DeployError(f"{name}: --dry-run is for up (it prints the offers it would take)")
    return autopilot.main([name, *words, *flags])


# The renting commands, each a deploy.autopilot subcommand: (name, help, usage).
RENTING = (
    (
        "up",
        "rent instances on Vast.ai (cheapest offers that fit), deploy and health-gate\n"
        "each, record them (docs/autopilot.md)",
        "up --count N --max-price USD [--gpu NAME] [--interruptible [--bid USD]]",
    ),
    (
        "down",
        "destroy rented instances (never only stop: a stopped one bills its disk);\n"
        "refuses a standalone box holding the only copy of results unless --force",
        "down NAME...|--all [--force]",
    ),
    (
        "boxes",
        "the rented instances: offer, price per hour, kind, uptime, spend, state",
        "",
    ),
    (
        "drain",
        "follow a batch: replace lost or outbid boxes while it has work, release idle\n"
        "ones, print the spend",
        "drain --api URL --batch ID [up's flags]",
    ),
)


def _renting(subcommand: str) -> Run:
    def run(ctx: Context, args: argparse.Namespace) -> int:
        return _autopilot(subcommand, ctx, args.rest)

    return run


for _name, _help, _usage in RENTING:
    command(_name, _help, usage=_usage, settings=False, rest=True)(_renting(_name))
