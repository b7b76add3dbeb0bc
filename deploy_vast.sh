#!/usr/bin/env bash
# Deploys this repository to a Vast.ai GPU instance and keeps it running there.
#
#   ./deploy_vast.sh [deploy]   preflight, sync the code with rsync to REMOTE_DIR, start or
#                               restart what changed under supervisord, wait for /health
#   ./deploy_vast.sh status | logs [PROGRAM] [-f] | tunnel | stop | ssh [CMD...] | offers
#
# Settings come from .env (or --env-file FILE), read as KEY=VALUE lines and never executed:
# VAST_HOST, VAST_PORT, VAST_SSH_KEY (required), VAST_USER (root), REMOTE_DIR (/workspace),
# DEPLOY_MODE (hybrid), INSTANCE_VENV (/opt/venv), plus the optional DEPLOY_*, HEALTH_TIMEOUT
# and TUNNEL_* values listed by --help. The instance must run the project's image: its
# runtime (Python, supervisor, requirements.instance.txt) lives in INSTANCE_VENV and is never
# pip-installed by a deploy.
#
# Every command that reaches the instance goes through remote(), so --dry-run prints
# instead of running (read-only probes still run). DEPLOY_TRACE=1 turns on `set -x`; the
# contents of .env are never traced or printed. What runs on the instance beyond a few shell
# lines is Python under scripts/instance/ (linted and type-checked), run there by
# INSTANCE_VENV's interpreter as `python -m scripts.instance.NAME` from REMOTE_DIR.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "[deploy] error: bash 4.4 or newer is required (macOS: brew install bash)" >&2
  exit 1
fi

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROJECT_ROOT
readonly PROGRAM_NAME="./deploy_vast.sh"
readonly PROGRAMS=(fastapi worker-cpu worker-gpu llama web temporal minio)
# The image the README names; offers and the wrong-image message print it unless VAST_IMAGE
# is set (ghcr.io/OWNER/REPO when this checkout's origin is on GitHub).
readonly DEFAULT_IMAGE="ghcr.io/<owner>/<repo>:stable"
# Subcommands: each is a cmd_NAME function. Those in NO_SETTINGS_COMMANDS run without a
# valid .env; the others get load_config first. A new subcommand (or one that sources its
# own file, e.g. scripts/deploy/NAME.sh defining cmd_NAME) only needs adding here.
COMMANDS=(deploy status logs tunnel stop ssh offers)
NO_SETTINGS_COMMANDS=(offers)

# Names read from the env file. Nothing else is kept, so secrets never enter this shell.
readonly DEPLOY_KEYS=(
  VAST_HOST VAST_PORT VAST_SSH_KEY VAST_USER VAST_IMAGE REMOTE_DIR
  DEPLOY_LOCK_TIMEOUT DEPLOY_SSH_TIMEOUT HEALTH_TIMEOUT
  TUNNEL_API_PORT TUNNEL_WEB_PORT TUNNEL_S3_CONSOLE_PORT TUNNEL_TEMPORAL_TARGET TUNNEL_S3_TARGET
)
# Settings of the stack itself: taken from the env file only, because that file is what the
# instance runs with (an override in this shell would not reach it; INSTANCE_VENV is often
# exported for local development and names a path on this machine, not on the instance).
readonly STACK_KEYS=(
  DEPLOY_MODE INSTANCE_VENV API_PORT WEB_PORT MINIO_CONSOLE_PORT TEMPORAL_ADDRESS MINIO_ENDPOINT
  DATA_DIR
)

DRY_RUN=0
ENV_FILE_PATH=""
ENV_FILE_GIVEN=0
declare -A ENV_VALUES=()
CTL_DIR=""
MUX_READY=0
LOCK_SESSION=0
LOCK_HELD=0
START_US=0

usage() {
  cat <<USAGE
Usage: ${PROGRAM_NAME} [--dry-run] [--env-file FILE] [COMMAND [ARGS]]

Commands:
  deploy               (default) preflight, sync code to REMOTE_DIR, start or restart what
                       changed, wait until /health is ok, print a summary
  status               supervisord programs and the /health summary of the instance
  logs [PROGRAM] [-f] [-n LINES]
                       tail a program's log (${PROGRAMS[*]} supervisord);
                       without PROGRAM, the last lines of every log
  tunnel               forward the instance's API, dashboard and S3 console to this machine;
                       in hybrid mode also expose this machine's Temporal and S3 to the instance
  stop                 stop every service on the instance (data is kept)
  ssh [CMD...]         open a shell in REMOTE_DIR on the instance, or run CMD there
  offers               print (and run, when the vastai CLI is installed) a search for
                       suitable Vast.ai offers
  fleet deploy|status|logs|stop|tunnel FLEETFILE
                       the same on every instance of a fleet file, in parallel, with one
                       summary table (scripts/fleet.py; README "Fleet")

Flags:
  --dry-run            print every command that would change the instance, run rsync with
                       --dry-run, change nothing (read-only checks still run)
  --env-file FILE      read settings from FILE instead of .env
  -h, --help           this help

Settings (.env; the ones marked * may also come from the environment, which wins):
  VAST_HOST*, VAST_PORT*, VAST_SSH_KEY*  SSH host, port and private key of the instance (required)
  VAST_USER* (root)  REMOTE_DIR* (/workspace)  INSTANCE_VENV (/opt/venv)  DEPLOY_MODE (hybrid)
  DATA_DIR (data)             never synced, never deleted on the instance by the sync
  DEPLOY_LOCK_TIMEOUT* (600)  seconds to wait for another deploy holding the instance's lock
  DEPLOY_SSH_TIMEOUT* (15)    SSH connect timeout in seconds
  HEALTH_TIMEOUT* (300)       seconds to wait for /health after starting
  TUNNEL_API_PORT* (18000), TUNNEL_WEB_PORT* (13000), TUNNEL_S3_CONSOLE_PORT* (19001)
                              local ports of the tunnel (clear of a local stack's own)
  TUNNEL_TEMPORAL_TARGET* (127.0.0.1:7233), TUNNEL_S3_TARGET* (127.0.0.1:9000)
                              local Temporal and S3 the instance reaches through the tunnel (hybrid)
  VAST_IMAGE*                 image named by 'offers' and in error messages
                              (default ${DEFAULT_IMAGE})
  DEPLOY_TRACE=1              trace this script (secrets are never traced)
USAGE
}

log() { printf '[deploy] %s\n' "$*" >&2; }
warn() { printf '[deploy] warning: %s\n' "$*" >&2; }
die() {
  printf '[deploy] error: %s\n' "$*" >&2
  exit 1
}

now_us() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    local t="${EPOCHREALTIME/[.,]/}"
    echo "$((10#$t))"
  else
    echo "$((SECONDS * 1000000))"
  fi
}

elapsed() {
  local us=$(($(now_us) - START_US))
  printf '%d.%01ds' "$((us / 1000000))" "$(((us % 1000000) / 100000))"
}

# Turns xtrace off until xtrace_restore; used around anything that may hold a secret.
XTRACE_WAS_ON=0
xtrace_off() {
  { XTRACE_WAS_ON=0; [[ $- == *x* ]] && XTRACE_WAS_ON=1; set +x; } 2>/dev/null
}
xtrace_restore() {
  if ((XTRACE_WAS_ON)); then set -x; fi
}

indent() { printf '    %s' "${1//$'\n'/$'\n'    }"; }

# Quotes one word for a POSIX shell (the login shell of the instance parses argv commands).
sq() {
  local s="$1"
  printf "'%s'" "${s//\'/\'\\\'\'}"
}

# ---------------------------------------------------------------------------------------
# Settings

# Removes the quoting of one dotenv value the way python-dotenv does for the common cases:
# 'single' is literal, "double" understands \" and \\ (and \n, \t), unquoted values end
# at " #". The result is in UNQUOTED.
unquote_value() {
  local v="$1" out="" i c
  if [[ "$v" == \'* ]]; then
    v="${v:1}"
    UNQUOTED="${v%%\'*}"
    return
  fi
  if [[ "$v" == \"* ]]; then
    for ((i = 1; i < ${#v}; i++)); do
      c="${v:i:1}"
      if [[ "$c" == "\\" ]]; then
        i=$((i + 1))
        case "${v:i:1}" in
          n) out+=$'\n' ;;
          t) out+=$'\t' ;;
          *) out+="${v:i:1}" ;;
        esac
      elif [[ "$c" == '"' ]]; then
        break
      else
        out+="$c"
      fi
    done
    UNQUOTED="$out"
    return
  fi
  v="${v%%[[:space:]]#*}"
  v="${v%"${v##*[![:space:]]}"}"
  UNQUOTED="$v"
}

# Reads the names in DEPLOY_KEYS and STACK_KEYS from a dotenv file into ENV_VALUES, without
# executing it. Every other line (API keys, S3 secrets...) is skipped unread.
read_env_file() {
  local file="$1" line key wanted=" ${DEPLOY_KEYS[*]} ${STACK_KEYS[*]} "
  xtrace_off
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*=[[:space:]]*(.*)$ ]] \
      || continue
    key="${BASH_REMATCH[2]}"
    [[ "$wanted" == *" ${key} "* ]] || continue
    unquote_value "${BASH_REMATCH[3]}"
    ENV_VALUES["$key"]="$UNQUOTED"
  done <"$file"
  xtrace_restore
}

# setting NAME DEFAULT: the environment (deploy settings only), then the env file, then
# DEFAULT. Empty values count as unset, as in kernel/config.py.
setting() {
  local name="$1" default="$2"
  if [[ " ${DEPLOY_KEYS[*]} " == *" ${name} "* && -n "${!name:-}" ]]; then
    printf '%s' "${!name}"
  elif [[ -n "${ENV_VALUES[$name]:-}" ]]; then
    printf '%s' "${ENV_VALUES[$name]}"
  else
    printf '%s' "$default"
  fi
}

require_setting() {
  local name="$1" hint="$2" value
  value="$(setting "$name" "")"
  [[ -n "$value" ]] || die "${name} is not set in ${ENV_FILE_PATH}: ${hint}"
  printf '%s' "$value"
}

require_port() {
  local name="$1" value="$2"
  if [[ ! "$value" =~ ^[0-9]{1,5}$ ]] || ((10#$value < 1 || 10#$value > 65535)); then
    die "${name} must be a port number (1-65535), got '${value}'"
  fi
}

require_seconds() {
  local name="$1" value="$2"
  [[ "$value" =~ ^[0-9]{1,6}$ ]] || die "${name} must be a number of seconds, got '${value}'"
}

require_host_port() {
  local name="$1" value="$2"
  [[ "$value" =~ ^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$ ]] \
    || die "${name} must be host:port, got '${value}'"
}

# Loads and validates every setting; nothing reaches the instance before this passes.
load_config() {
  if ((ENV_FILE_GIVEN)); then
    [[ -f "$ENV_FILE_PATH" ]] || die "--env-file: no settings file at ${ENV_FILE_PATH}"
  else
    ENV_FILE_PATH="${PROJECT_ROOT}/.env"
    [[ -f "$ENV_FILE_PATH" ]] \
      || die "no settings file at ${ENV_FILE_PATH}: copy .env.example to .env and set VAST_HOST, VAST_PORT and VAST_SSH_KEY"
  fi
  [[ -r "$ENV_FILE_PATH" ]] || die "${ENV_FILE_PATH} is not readable"
  read_env_file "$ENV_FILE_PATH"

  VAST_HOST="$(require_setting VAST_HOST "the SSH host of the instance (Vast console: Connect, e.g. ssh4.vast.ai)")"
  VAST_PORT="$(require_setting VAST_PORT "the SSH port of the instance (the -p value of its ssh command)")"
  VAST_SSH_KEY="$(require_setting VAST_SSH_KEY "the path of the private key whose public key is in your Vast account")"
  VAST_USER="$(setting VAST_USER root)"
  VAST_IMAGE="$(setting VAST_IMAGE "")"
  REMOTE_DIR="$(setting REMOTE_DIR /workspace)"
  INSTANCE_VENV="$(setting INSTANCE_VENV /opt/venv)"
  DEPLOY_MODE="$(setting DEPLOY_MODE hybrid)"
  DEPLOY_LOCK_TIMEOUT="$(setting DEPLOY_LOCK_TIMEOUT 600)"
  DEPLOY_SSH_TIMEOUT="$(setting DEPLOY_SSH_TIMEOUT 15)"
  HEALTH_TIMEOUT="$(setting HEALTH_TIMEOUT 300)"
  API_PORT="$(setting API_PORT 8000)"
  WEB_PORT="$(setting WEB_PORT 3000)"
  MINIO_CONSOLE_PORT="$(setting MINIO_CONSOLE_PORT 9001)"
  TEMPORAL_ADDRESS="$(setting TEMPORAL_ADDRESS 127.0.0.1:7233)"
  MINIO_ENDPOINT="$(setting MINIO_ENDPOINT 127.0.0.1:9000)"
  TUNNEL_API_PORT="$(setting TUNNEL_API_PORT 18000)"
  TUNNEL_WEB_PORT="$(setting TUNNEL_WEB_PORT 13000)"
  TUNNEL_S3_CONSOLE_PORT="$(setting TUNNEL_S3_CONSOLE_PORT 19001)"
  DATA_DIR="$(setting DATA_DIR data)"
  TUNNEL_TEMPORAL_TARGET="$(setting TUNNEL_TEMPORAL_TARGET 127.0.0.1:7233)"
  TUNNEL_S3_TARGET="$(setting TUNNEL_S3_TARGET 127.0.0.1:9000)"

  [[ "$VAST_HOST" =~ ^[A-Za-z0-9._:-]+$ && "$VAST_HOST" != -* ]] \
    || die "VAST_HOST must be a host name or IP address, got '${VAST_HOST}'"
  require_port VAST_PORT "$VAST_PORT"
  [[ "$VAST_USER" =~ ^[A-Za-z_][A-Za-z0-9_.-]*$ ]] || die "VAST_USER must be a user name, got '${VAST_USER}'"
  case "$DEPLOY_MODE" in
    hybrid | standalone | local) ;;
    *) die "DEPLOY_MODE must be one of hybrid, standalone, local; got '${DEPLOY_MODE}'" ;;
  esac
  [[ "$REMOTE_DIR" == /* && "$REMOTE_DIR" != */ && "$REMOTE_DIR" != *$'\n'* ]] \
    || die "REMOTE_DIR must be an absolute directory path without a trailing slash, got '${REMOTE_DIR}'"
  [[ "$INSTANCE_VENV" == /* && "$INSTANCE_VENV" != *$'\n'* ]] \
    || die "INSTANCE_VENV must be an absolute path, got '${INSTANCE_VENV}'"
  require_seconds DEPLOY_LOCK_TIMEOUT "$DEPLOY_LOCK_TIMEOUT"
  require_seconds DEPLOY_SSH_TIMEOUT "$DEPLOY_SSH_TIMEOUT"
  require_seconds HEALTH_TIMEOUT "$HEALTH_TIMEOUT"
  local name
  for name in API_PORT WEB_PORT MINIO_CONSOLE_PORT TUNNEL_API_PORT TUNNEL_WEB_PORT TUNNEL_S3_CONSOLE_PORT; do
    require_port "$name" "${!name}"
  done
  for name in TEMPORAL_ADDRESS MINIO_ENDPOINT TUNNEL_TEMPORAL_TARGET TUNNEL_S3_TARGET; do
    require_host_port "$name" "${!name}"
  done

  [[ "$VAST_SSH_KEY" == \~/* ]] && VAST_SSH_KEY="${HOME}/${VAST_SSH_KEY:2}"
  [[ "$VAST_SSH_KEY" == /* ]] || VAST_SSH_KEY="${PROJECT_ROOT}/${VAST_SSH_KEY}"
  DATA_DIR_SYNCED="$(data_dir_in_repo "$DATA_DIR")"

  readonly VAST_HOST VAST_PORT VAST_SSH_KEY VAST_USER VAST_IMAGE REMOTE_DIR INSTANCE_VENV \
    DEPLOY_MODE DEPLOY_LOCK_TIMEOUT DEPLOY_SSH_TIMEOUT HEALTH_TIMEOUT API_PORT WEB_PORT \
    MINIO_CONSOLE_PORT TEMPORAL_ADDRESS MINIO_ENDPOINT TUNNEL_API_PORT TUNNEL_WEB_PORT \
    TUNNEL_S3_CONSOLE_PORT TUNNEL_TEMPORAL_TARGET TUNNEL_S3_TARGET DATA_DIR DATA_DIR_SYNCED

  local host="$VAST_HOST"
  [[ "$host" == *:* ]] && host="[${host}]"
  readonly TARGET="${VAST_USER}@${VAST_HOST}"
  readonly RSYNC_TARGET="${VAST_USER}@${host}:${REMOTE_DIR}/"
  readonly WHERE="${VAST_USER}@${VAST_HOST}:${VAST_PORT}"
  readonly KNOWN_HOSTS="${PROJECT_ROOT}/.deploy/known_hosts"
  SSH_OPTS=(
    -p "$VAST_PORT"
    -i "$VAST_SSH_KEY"
    -o IdentitiesOnly=yes
    -o BatchMode=yes
    -o "UserKnownHostsFile=${KNOWN_HOSTS}"
    -o StrictHostKeyChecking=accept-new
    -o HashKnownHosts=no
    -o "ConnectTimeout=${DEPLOY_SSH_TIMEOUT}"
    -o ServerAliveInterval=15
    -o ServerAliveCountMax=4
    -o LogLevel=ERROR
  )
}

# The image to rent: VAST_IMAGE, else the one this checkout publishes to GHCR, else the
# README's ghcr.io/<owner>/<repo>:stable.
image_hint() {
  if [[ -n "$VAST_IMAGE" ]]; then
    printf '%s' "$VAST_IMAGE"
    return
  fi
  local origin
  origin="$(git -C "$PROJECT_ROOT" remote get-url origin 2>/dev/null || true)"
  if [[ "$origin" =~ github\.com[:/]([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)$ ]]; then
    local repo="${BASH_REMATCH[2]%.git}"
    printf 'ghcr.io/%s/%s:stable' "${BASH_REMATCH[1],,}" "${repo,,}"
  else
    printf '%s' "$DEFAULT_IMAGE"
  fi
}

# DATA_DIR as a path inside the synced tree (relative to the repository), or nothing when it
# lies outside REMOTE_DIR. rsync --delete must never touch it.
data_dir_in_repo() {
  local dir="$1" part parts=() out=()
  if [[ "$dir" == /* ]]; then
    [[ "$dir" == "${REMOTE_DIR}/"* ]] || return 0
    dir="${dir#"${REMOTE_DIR}/"}"
  fi
  IFS=/ read -r -a parts <<<"$dir"
  for part in "${parts[@]}"; do
    case "$part" in
      "" | .) ;;
      ..)
        ((${#out[@]})) || return 0 # above the repository: outside the synced tree
        unset 'out[-1]' ;;
      *) out+=("$part") ;;
    esac
  done
  ((${#out[@]})) || die "DATA_DIR must be a folder of its own, not the repository itself (got '${1}')"
  local IFS=/
  printf '%s' "${out[*]}"
}

# Everything an SSH connection needs on this side: the tools, a usable key, known_hosts.
prepare_ssh() {
  check_local_tools ssh "$@"
  check_key
  ensure_known_hosts
}

check_local_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "${tool} is not installed on this machine (it is needed to reach the instance)"
  done
}

file_mode() {
  stat -c '%a' "$1" 2>/dev/null || stat -f '%Lp' "$1"
}

check_key() {
  [[ -e "$VAST_SSH_KEY" ]] || die "VAST_SSH_KEY: no key at ${VAST_SSH_KEY}"
  [[ -f "$VAST_SSH_KEY" && -r "$VAST_SSH_KEY" ]] || die "VAST_SSH_KEY: ${VAST_SSH_KEY} is not a readable file"
  local first=""
  IFS= read -r first <"$VAST_SSH_KEY" || true
  if [[ "$VAST_SSH_KEY" == *.pub || "$first" =~ ^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+\ [A-Za-z0-9+/=]+ ]]; then
    die "VAST_SSH_KEY: ${VAST_SSH_KEY} is a public key; point VAST_SSH_KEY at the private key (${VAST_SSH_KEY%.pub} if that is its pair)"
  fi
  local mode
  mode="$(file_mode "$VAST_SSH_KEY")"
  if ((8#$mode & 8#077)); then
    die "VAST_SSH_KEY: ${VAST_SSH_KEY} is accessible by other users (mode ${mode}); run: chmod 600 $(printf '%q' "$VAST_SSH_KEY")"
  fi
}

# ---------------------------------------------------------------------------------------
# The instance

cleanup() {
  local rc=$?
  release_lock
  if [[ -n "$CTL_DIR" ]]; then
    if ((MUX_READY)); then
      ssh "${SSH_OPTS[@]}" -o "ControlPath=${CTL_DIR}/mux" -O exit "$TARGET" >/dev/null 2>&1 || true
    fi
    rm -rf "$CTL_DIR"
  fi
  return "$rc"
}

# Turns ssh's complaint into one line that says what to do.
explain_ssh_failure() {
  local errors="$1" last
  last="$(grep -v '^[[:space:]]*$' <<<"$errors" | tail -n 1)"
  case "$errors" in
    *"Could not resolve hostname"* | *"Name or service not known"* | *"nodename nor servname"*)
      echo "cannot resolve VAST_HOST '${VAST_HOST}': check the host name in the Vast console" ;;
    *"Connection refused"*)
      echo "nothing accepts SSH at ${VAST_HOST} port ${VAST_PORT} (connection refused): check VAST_PORT and that the instance is running" ;;
    *"timed out"*)
      echo "no answer from ${VAST_HOST} port ${VAST_PORT} within ${DEPLOY_SSH_TIMEOUT}s: the instance may be stopped, or VAST_HOST/VAST_PORT is wrong" ;;
    *"No route to host"* | *"Network is unreachable"*)
      echo "cannot reach ${VAST_HOST} port ${VAST_PORT} (${last}): check VAST_HOST and your network" ;;
    *"REMOTE HOST IDENTIFICATION HAS CHANGED"* | *"Host key verification failed"*)
      echo "the host key of ${VAST_HOST}:${VAST_PORT} differs from the one recorded in .deploy/known_hosts (a new instance on the same address?); if expected, run: ssh-keygen -f .deploy/known_hosts -R '[${VAST_HOST}]:${VAST_PORT}'" ;;
    *"Permission denied"* | *"Too many authentication failures"*)
      echo "${VAST_USER}@${VAST_HOST} refused the key ${VAST_SSH_KEY}: add its public key to your Vast account (then restart the instance) or check VAST_USER" ;;
    *"Connection closed"* | *"Connection reset"* | *"kex_exchange_identification"*)
      echo "${VAST_HOST} port ${VAST_PORT} closed the connection (${last}): the instance may still be starting; try again in a minute" ;;
    *"forwarding failed"* | *"cannot listen to port"* | *"Could not request local forwarding"*)
      echo "the tunnel could not forward a port (${last}): a port is taken, on this machine or on the instance" ;;
    *"Load key"* | *"invalid format"* | *"bad permissions"*)
      echo "ssh cannot use VAST_SSH_KEY ${VAST_SSH_KEY}: ${last}" ;;
    *)
      echo "cannot connect to ${WHERE}: ${last:-ssh failed}" ;;
  esac
}

# The project's own known_hosts: host keys are recorded on first use (accept-new).
ensure_known_hosts() {
  mkdir -p "$(dirname "$KNOWN_HOSTS")"
  [[ -f "$KNOWN_HOSTS" ]] || : >"$KNOWN_HOSTS"
}

# Opens the shared SSH connection that every later command of this run reuses.
connect() {
  CTL_DIR="$(mktemp -d /tmp/deploy-vast.XXXXXX)"
  if ((DRY_RUN)); then
    log "dry run: read-only checks still connect to ${WHERE}"
  fi
  if ! ssh "${SSH_OPTS[@]}" -o ControlMaster=yes -o "ControlPath=${CTL_DIR}/mux" \
    -o ControlPersist=60 -f -N "$TARGET" >"${CTL_DIR}/connect.log" 2>&1; then
    die "$(explain_ssh_failure "$(cat "${CTL_DIR}/connect.log")")"
  fi
  MUX_READY=1
}

ssh_base() {
  SSH_CMD=(ssh "${SSH_OPTS[@]}")
  if ((MUX_READY)); then
    SSH_CMD+=(-o ControlMaster=no -o "ControlPath=${CTL_DIR}/mux")
  fi
}

# Definitions every remote script starts with (never printed by --dry-run). Always runs in a
# subshell, so switching tracing off here only keeps the helpers' source out of traces.
remote_prelude() {
  { set +x; } 2>/dev/null
  printf 'set -euo pipefail\n'
  printf 'REMOTE_DIR=%q\n' "$REMOTE_DIR"
  printf 'export INSTANCE_VENV=%q\n' "$INSTANCE_VENV"
  cat <<'PRELUDE'
in_project() {
  cd -- "$REMOTE_DIR" 2>/dev/null || { echo "nothing is deployed in ${REMOTE_DIR}" >&2; exit 3; }
  [[ -f scripts/lib/common.sh ]] || { echo "${REMOTE_DIR} holds no deployed project" >&2; exit 3; }
  # shellcheck disable=SC1091
  source scripts/lib/common.sh
  LOG_PREFIX=instance
  load_settings
}
PRELUDE
}

# shipped_python NAME ARGS: a line of remote script that runs scripts/instance/NAME.py from
# this checkout with the instance's python, fed on stdin (for before the code is synced).
# ARGS is inserted as shell words, so it may refer to the remote script's variables.
shipped_python() {
  local file="${PROJECT_ROOT}/scripts/instance/$1.py"
  [[ -f "$file" ]] || die "internal: no ${file}"
  ! grep -qx 'INSTANCE_PY' "$file" || die "internal: ${file} holds the line INSTANCE_PY"
  # shellcheck disable=SC2016  # expanded on the instance
  printf '"${INSTANCE_VENV}/bin/python" - %s <<'"'"'INSTANCE_PY'"'"'\n' "$2"
  cat "$file"
  printf 'INSTANCE_PY\n'
}

# remote KIND ...: the one way anything reaches the instance.
#   remote probe DESC SCRIPT    read-only check; runs even with --dry-run
#   remote run DESC SCRIPT      changes the instance; --dry-run prints DESC and SCRIPT
#   remote secret DESC          script on stdin holds a secret; --dry-run prints DESC only
#   remote secret-probe DESC    same, read-only: runs even with --dry-run, never printed
#   remote session DESC SCRIPT  SCRIPT as the remote command with this stdin (lock holder)
#   remote attached DESC SCRIPT runs attached to this terminal (shell, logs -f); returns
#                               the remote status, dies when the connection is lost
#   remote tunnel DESC ARGS...  ssh -N ARGS until Ctrl-C; says when it is connected
#   remote rsync DESC ARGS...   rsync over the same SSH connection (--dry-run added)
remote() {
  local kind="$1" desc="$2"
  shift 2
  ssh_base
  case "$kind" in
    probe)
      "${SSH_CMD[@]}" "$TARGET" bash -s < <(remote_prelude; printf '%s\n' "$1")
      ;;
    run)
      if ((DRY_RUN)); then
        printf '[dry-run] would run on %s: %s\n%s\n' "$WHERE" "$desc" "$(indent "$1")"
        return 0
      fi
      "${SSH_CMD[@]}" "$TARGET" bash -s < <(remote_prelude; printf '%s\n' "$1")
      ;;
    secret | secret-probe)
      if ((DRY_RUN)) && [[ "$kind" == secret ]]; then
        printf '[dry-run] would run on %s: %s (contents not shown)\n' "$WHERE" "$desc"
        cat >/dev/null
        return 0
      fi
      { remote_prelude; cat; } | "${SSH_CMD[@]}" "$TARGET" bash -s
      ;;
    session)
      if ((DRY_RUN)); then
        printf '[dry-run] would run on %s: %s\n' "$WHERE" "$desc"
        return 0
      fi
      "${SSH_CMD[@]}" "$TARGET" "bash -c $(sq "$(remote_prelude; printf '%s\n' "$1")")"
      ;;
    attached)
      local tty=(-T) rc=0
      [[ -t 0 && -t 1 ]] && tty=(-t)
      if ((DRY_RUN)); then
        printf '[dry-run] would run on %s: %s\n%s\n' "$WHERE" "$desc" "$(indent "$1")"
        return 0
      fi
      "${SSH_CMD[@]}" "${tty[@]}" "$TARGET" "bash -c $(sq "$(remote_prelude; printf '%s\n' "$1")")" || rc=$?
      ((rc != 255)) || die "lost the SSH connection to ${WHERE}"
      return "$rc"
      ;;
    tunnel)
      if ((DRY_RUN)); then
        printf '[dry-run] would run: %s\n' "$(printf '%q ' "${SSH_CMD[@]}" -N "$@" "$TARGET")"
        return 0
      fi
      run_tunnel "$@"
      ;;
    rsync)
      local rsh="" word
      for word in "${SSH_CMD[@]}"; do
        [[ "$word" != *\'* ]] || die "cannot pass '${word}' to rsync: remove the single quote from the path"
        rsh+="'${word}' "
      done
      local args=(-e "$rsh" "$@")
      ((DRY_RUN)) && args=(--dry-run "${args[@]}")
      if ((DRY_RUN)); then
        printf '[dry-run] rsync --dry-run to %s\n' "$RSYNC_TARGET" >&2
      fi
      rsync "${args[@]}"
      ;;
    *) die "internal: unknown remote kind ${kind}" ;;
  esac
}

# Runs a probe; exits with a clear message when the connection itself failed.
probe() {
  local rc=0
  remote probe "$@" || rc=$?
  ((rc != 255)) || die "lost the SSH connection to ${WHERE}"
  return "$rc"
}

# Runs the tunnel's ssh as a child until it ends or this script is told to stop (Ctrl-C,
# SIGTERM), so the banner comes only once ssh has connected and bound the local ports (ssh
# runs LocalCommand then), and a failure to connect ends with the usual one-line reason.
run_tunnel() {
  CTL_DIR="${CTL_DIR:-$(mktemp -d /tmp/deploy-vast.XXXXXX)}"
  local marker="${CTL_DIR}/connected" errors="${CTL_DIR}/tunnel.log" rc=0
  "${SSH_CMD[@]}" -n -N "$@" -o PermitLocalCommand=yes -o "LocalCommand=: >${marker}" \
    "$TARGET" 2>"$errors" &
  TUNNEL_PID=$!
  trap stop_tunnel INT TERM HUP
  until [[ -e "$marker" ]]; do
    if ! kill -0 "$TUNNEL_PID" 2>/dev/null; then
      wait "$TUNNEL_PID" || rc=$?
      TUNNEL_PID=""
      die "$(explain_ssh_failure "$(cat "$errors")")"
    fi
    sleep 0.1
  done
  tunnel_banner
  wait "$TUNNEL_PID" || rc=$?
  TUNNEL_PID=""
  die "the tunnel to ${WHERE} closed (exit ${rc}): $(explain_ssh_failure "$(cat "$errors")")"
}

stop_tunnel() {
  if [[ -n "${TUNNEL_PID:-}" ]]; then
    kill -TERM "$TUNNEL_PID" 2>/dev/null || true
    wait "$TUNNEL_PID" 2>/dev/null || true
    TUNNEL_PID=""
  fi
  log "tunnel closed"
  exit 0
}

# ---------------------------------------------------------------------------------------
# Deploy phases

preflight() {
  log "preflight: ${WHERE} -> ${REMOTE_DIR} (mode ${DEPLOY_MODE})"
  prepare_ssh rsync
  connect
  local pins=() line pin_re='^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^]]*\])?==[^[:space:];#]+'
  if [[ -f "${PROJECT_ROOT}/requirements.instance.txt" ]]; then
    while IFS= read -r line || [[ -n "$line" ]]; do
      if [[ "$line" =~ $pin_re ]]; then pins+=("${BASH_REMATCH[0]}"); fi
    done <"${PROJECT_ROOT}/requirements.instance.txt"
  fi
  local script out rc=0
  script="$(
    cat <<'SH'
missing=()
[[ -x "${INSTANCE_VENV}/bin/python" ]] || missing+=("${INSTANCE_VENV}/bin/python")
[[ -x "${INSTANCE_VENV}/bin/supervisord" ]] || missing+=("${INSTANCE_VENV}/bin/supervisord")
command -v rsync >/dev/null || missing+=(rsync)
command -v flock >/dev/null || missing+=(flock)
if ((${#missing[@]})); then echo "missing ${missing[*]}"; exit 0; fi
parent="$REMOTE_DIR"
while [[ ! -e "$parent" ]]; do parent="$(dirname "$parent")"; done
[[ -d "$parent" && -w "$parent" ]] || { echo "unwritable ${parent}"; exit 0; }
SH
    if ((${#pins[@]})); then
      printf 'runtime_drift() {\n'
      # shellcheck disable=SC2016  # expanded on the instance
      shipped_python requirements "\"\${INSTANCE_VENV}\"$(printf ' %q' "${pins[@]}")"
      printf '}\n{ runtime_drift || true; } | sed "s/^/drift /"\n'
    fi
    printf 'echo ok\n'
  )"
  out="$(probe "runtime check" "$script")" || rc=$?
  ((rc == 0)) || die "the runtime check on the instance failed (exit ${rc}): $(tail -n 1 <<<"$out")"
  case "$out" in
    missing\ *)
      die "the instance lacks ${out#missing }: it does not run the project's image; use $(image_hint) (or set INSTANCE_VENV)" ;;
    unwritable\ *)
      die "REMOTE_DIR ${REMOTE_DIR} cannot be created: ${out#unwritable } is not writable by ${VAST_USER}" ;;
  esac
  local drift
  drift="$(sed -n 's/^drift //p' <<<"$out")"
  if [[ -n "$drift" ]]; then
    warn "the instance's runtime differs from requirements.instance.txt (no pip install is done; rebuild or pull the image):"
    printf '[deploy]   %s\n' "${drift//$'\n'/$'\n'[deploy]   }" >&2
  fi
  log "preflight: ok (ssh, key, ${INSTANCE_VENV}, rsync and flock on the instance)"
}

# Holds the instance's deploy lock for the rest of this run: a remote flock held by an SSH
# session whose stdin is ours, so it is released when this script ends, however it ends.
acquire_lock() {
  if ((DRY_RUN)); then
    printf '[dry-run] would take the deploy lock %s/.deploy/lock on %s\n' "$REMOTE_DIR" "$WHERE"
    return 0
  fi
  local owner script line
  owner="$(hostname 2>/dev/null || echo unknown) pid $$ since $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
  script="$(
    printf 'timeout=%q\nowner=%q\n' "$DEPLOY_LOCK_TIMEOUT" "$owner"
    cat <<'SH'
mkdir -p -- "${REMOTE_DIR}/.deploy"
chmod 700 "${REMOTE_DIR}/.deploy"
exec 9>>"${REMOTE_DIR}/.deploy/lock"
if ! flock -n 9; then
  echo "waiting $(cat "${REMOTE_DIR}/.deploy/lock.owner" 2>/dev/null || echo another deploy)"
  flock -w "$timeout" 9 || { echo timeout; exit 75; }
fi
printf '%s\n' "$owner" >"${REMOTE_DIR}/.deploy/lock.owner"
echo locked
exec cat >/dev/null
SH
  )"
  coproc LOCK_PROC { { set +x; } 2>/dev/null; remote session "deploy lock" "$script" 2>&1; }
  LOCK_SESSION=1
  local deadline=$((DEPLOY_SSH_TIMEOUT + 30))
  while IFS= read -r -t "$deadline" -u "${LOCK_PROC[0]}" line; do
    case "$line" in
      locked)
        LOCK_HELD=1
        log "lock: acquired ${REMOTE_DIR}/.deploy/lock"
        return 0 ;;
      waiting\ *)
        log "lock: another deploy holds the instance (${line#waiting }); waiting up to ${DEPLOY_LOCK_TIMEOUT}s (DEPLOY_LOCK_TIMEOUT)"
        deadline=$((DEPLOY_LOCK_TIMEOUT + 30)) ;;
      timeout)
        die "another deploy still holds the lock on ${WHERE} after ${DEPLOY_LOCK_TIMEOUT}s; try again when it is done, or raise DEPLOY_LOCK_TIMEOUT" ;;
      *) [[ -z "$line" ]] || log "lock: ${line}" ;;
    esac
  done
  die "could not take the deploy lock on ${WHERE}: the SSH session ended or stopped answering"
}

release_lock() {
  ((LOCK_SESSION)) || return 0
  LOCK_SESSION=0
  local pid="${LOCK_PROC_PID:-}" fd="${LOCK_PROC[1]:-}"
  if ((LOCK_HELD)); then
    LOCK_HELD=0
    log "lock: released"
  fi
  # End of input ends the remote holder, which releases the flock.
  if [[ -n "$fd" ]]; then
    exec {fd}>&-
  fi
  if [[ -n "$pid" ]]; then
    wait "$pid" 2>/dev/null || true
  fi
}

# data, models, logs and virtualenvs without a trailing slash: a symlink of that name (a
# checkout sharing its .venv or models/) is left out too, rather than sent in place of the
# instance's folder (rsync cannot, and stops).
RSYNC_FILTERS=(
  --filter='- /.git/'
  --filter='- /.deploy/'
  --filter='- /.env'
  --filter='+ /.env.example'
  --filter='- /.env.*'
  --filter='- /data'
  --filter='- /models'
  --filter='- /logs'
  --filter='- *.gguf'
  --filter='- *.pem'
  --filter='- *.key'
  --filter='- id_*'
  --filter='- .venv'
  --filter='- venv'
  --filter='- .venv-*'
  --filter='-p __pycache__/'
  --filter='-p *.py[cod]'
  --filter='-p .mypy_cache/'
  --filter='-p .ruff_cache/'
  --filter='-p .pytest_cache/'
  --filter='-p .cache/'
  --filter='-p *.egg-info/'
  --filter='-p .coverage'
  --filter='-p htmlcov/'
  --filter='-p node_modules/'
  --filter='-p .DS_Store'
)

# An rsync filter pattern that matches PATH literally (wildcards escaped).
rsync_literal() {
  local path="$1"
  if [[ "$path" == *[\*\?\[]* ]]; then
    path="${path//\\/\\\\}"
    path="${path//\*/\\*}"
    path="${path//\?/\\?}"
    path="${path//\[/\\[}"
  fi
  printf '%s' "$path"
}

# PATH relative to the repository when it lies inside it (its folder resolved), else nothing.
repo_relative() {
  local path="$1" dir root
  dir="$(cd "$(dirname "$path")" 2>/dev/null && pwd -P)" || return 0
  path="${dir}/$(basename "$path")"
  for root in "$PROJECT_ROOT" "$(cd "$PROJECT_ROOT" && pwd -P)"; do
    if [[ "$path" == "${root}/"* ]]; then
      printf '%s' "${path#"${root}/"}"
      return 0
    fi
  done
}

# Filters for this run's secrets and data: the SSH key and the env file are never sent, even
# when they sit inside the repository (nor what a symlink of either points to), and DATA_DIR
# inside it is neither sent nor deleted on the instance, like data/.
secret_filters() {
  SECRET_FILTERS=()
  local given path rel
  for given in "$VAST_SSH_KEY" "$ENV_FILE_PATH"; do
    local candidates=("$given")
    [[ -L "$given" ]] && candidates+=("$(readlink -f "$given" 2>/dev/null || true)")
    for path in "${candidates[@]}"; do
      [[ -n "$path" ]] || continue
      rel="$(repo_relative "$path")"
      [[ -n "$rel" ]] || continue
      [[ "$rel" != *$'\n'* ]] || die "cannot exclude ${path} from the sync: its name holds a newline"
      SECRET_FILTERS+=("--filter=- /$(rsync_literal "$rel")")
    done
  done
  if [[ -n "$DATA_DIR_SYNCED" ]]; then
    SECRET_FILTERS+=("--filter=- /$(rsync_literal "$DATA_DIR_SYNCED")/")
  fi
}

# Sends the code; CHANGED_FILES lists what rsync changed (or would change).
sync_code() {
  local out line flags path
  secret_filters
  out="$(remote rsync "code" -rlptDz -s --delete --no-owner --no-group \
    --itemize-changes --out-format='%i %n' "${SECRET_FILTERS[@]}" "${RSYNC_FILTERS[@]}" \
    "${PROJECT_ROOT}/" "$RSYNC_TARGET")" || die "rsync to ${WHERE}:${REMOTE_DIR} failed (see above)"
  CHANGED_FILES=()
  while IFS= read -r line; do
    flags="${line:0:11}"
    path="${line:12}"
    [[ -n "$path" ]] || continue
    case "$flags" in
      '*deleting'*) CHANGED_FILES+=("$path") ;;
      [\<\>ch]f*) CHANGED_FILES+=("$path") ;;
      [\<\>ch]L*) CHANGED_FILES+=("$path") ;;
    esac
  done <<<"$out"
  local n=${#CHANGED_FILES[@]} verb=changed
  ((DRY_RUN)) && verb="would change"
  if ((n == 0)); then
    log "sync: code is up to date"
  else
    local shown
    shown="$(printf '%s, ' "${CHANGED_FILES[@]:0:8}")"
    shown="${shown%, }"
    ((n > 8)) && shown+=", ..."
    log "sync: ${n} file(s) ${verb}: ${shown}"
  fi
}

# The script that sends .env: its contents travel base64-encoded inside the script on stdin,
# never in a command line. Dry runs only compare.
env_upload_script() {
  printf 'dry_run=%d\n' "$DRY_RUN"
  printf '%s\n' "content=\"\$(cat <<'ENVFILE'"
  base64 <"$ENV_FILE_PATH"
  cat <<'SH'
ENVFILE
)"
target="${REMOTE_DIR}/.env"
if [[ -f "$target" ]] && base64 -d <<<"$content" | cmp -s - "$target"; then
  ((dry_run)) || chmod 600 "$target"
  echo same
elif ((dry_run)); then
  echo changed
else
  umask 077
  mkdir -p -- "$REMOTE_DIR"
  tmp="$(mktemp "${REMOTE_DIR}/.env.upload.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  base64 -d <<<"$content" >"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$target"
  echo changed
fi
SH
}

# Sends .env with mode 600; sets ENV_CHANGED to 1 when it differed from the instance's copy.
upload_env() {
  ENV_CHANGED=0
  local out rc=0 kind=secret
  ((DRY_RUN)) && kind=secret-probe
  xtrace_off
  out="$(env_upload_script | remote "$kind" ".env upload")" || rc=$?
  xtrace_restore
  ((rc == 0)) || die "could not send .env to ${WHERE}:${REMOTE_DIR} (exit ${rc})"
  [[ "$out" == *changed* ]] && ENV_CHANGED=1
  if ((DRY_RUN)); then
    printf '[dry-run] would send %s to %s/.env (mode 600): %s\n' "$ENV_FILE_PATH" "$REMOTE_DIR" \
      "$( ((ENV_CHANGED)) && echo "it differs from the instance's copy" || echo "unchanged")"
  elif ((ENV_CHANGED)); then
    log "env: ${ENV_FILE_PATH} -> ${REMOTE_DIR}/.env (mode 600, changed)"
  else
    log "env: ${REMOTE_DIR}/.env is up to date (mode 600)"
  fi
}

# Brings the instance to the synced code: start, restart what changed since the last deploy
# (fingerprints in .deploy/manifest.json, so an interrupted deploy is finished by the next
# one), record the new fingerprints, then wait for /health: scripts/instance/converge.py.
converge_script() {
  printf 'health_timeout=%q\n' "$HEALTH_TIMEOUT"
  # converge.py validates the settings itself (kernel.config): no load_settings here.
  cat <<'SH'
cd -- "$REMOTE_DIR"
exec "${INSTANCE_VENV}/bin/python" -m scripts.instance.converge --health-timeout "$health_timeout"
SH
}

# For a dry run: what the deploy would do, planned on the instance by this checkout's
# scripts/instance/plan.py from supervisord's state, the changes the last deploy left
# unapplied (manifest.py) and those this run would make. Prints "plan: TEXT".
dry_run_plan_script() {
  local paths=("${CHANGED_FILES[@]}")
  ((ENV_CHANGED)) && paths+=(.env)
  printf 'local_paths=('
  ((${#paths[@]} == 0)) || printf ' %q' "${paths[@]}"
  printf ' )\n'
  printf 'pending_paths() {\n'
  # shellcheck disable=SC2016  # expanded on the instance
  shipped_python manifest '"${REMOTE_DIR}/.deploy/manifest.json" --root "$REMOTE_DIR"'
  printf '}\nplan() {\n'
  # shellcheck disable=SC2016  # expanded on the instance
  shipped_python plan '"$@"'
  printf '}\n'
  cat <<'SH'
state=absent
pending=()
if [[ -f "${REMOTE_DIR}/scripts/lib/common.sh" ]]; then
  in_project >/dev/null
  state=stopped
  if supervisord_running; then state=running; fi
  mapfile -t pending < <(pending_paths)
  if [[ "${pending[0]:-}" == "@unknown" ]]; then pending=(.env); fi
fi
echo "plan: $(plan "$state" "${pending[@]}" "${local_paths[@]}")"
SH
}

converge() {
  local script
  script="$(converge_script)"
  if ((DRY_RUN)); then
    local out
    out="$(probe "plan" "$(dry_run_plan_script)")" || die "could not read the state of ${WHERE}:${REMOTE_DIR}"
    PLAN_TEXT="$(sed -n 's/^plan: //p' <<<"$out" | tail -n 1)"
    [[ -n "$PLAN_TEXT" ]] || die "could not plan the deploy on ${WHERE}: ${out##*$'\n'}"
    RESULT_ACTION="would ${PLAN_TEXT}"
    log "start: would ${PLAN_TEXT}"
    remote run "converge, then wait up to ${HEALTH_TIMEOUT}s for /health" "$script"
    return 0
  fi
  log "start: restart what changed since the last deploy, then wait up to ${HEALTH_TIMEOUT}s for http://127.0.0.1:${API_PORT}/health"
  local rc=0 output="${CTL_DIR}/converge.log"
  remote run "converge" "$script" 2>&1 | tee "$output" | sed 's/^/[deploy]   /' >&2 || rc=$?
  RESULT_ACTION="$(sed -n 's/^done: //p' "$output" | tail -n 1)"
  ((rc != 255)) || die "lost the SSH connection to ${WHERE} while starting the services"
  if ((rc != 0)); then
    if grep -q '^error: ' "$output"; then
      die "$(sed -n 's/^error: //p' "$output" | tail -n 1)"
    fi
    if grep -q '^unhealthy: ' "$output"; then
      die "the services on ${WHERE} are not healthy ($(sed -n 's/^unhealthy: //p' "$output" | tail -n 1)); fix and run ${PROGRAM_NAME} again, or inspect with: ${PROGRAM_NAME} logs PROGRAM"
    fi
    die "starting the services on ${WHERE} failed (exit ${rc}, see above)"
  fi
}

env_file_flag() {
  if ((ENV_FILE_GIVEN)); then
    printf ' --env-file %q' "$ENV_FILE_PATH"
  fi
}

tunnel_args() {
  TUNNEL_ARGS=(
    -o ExitOnForwardFailure=yes
    -L "127.0.0.1:${TUNNEL_API_PORT}:127.0.0.1:${API_PORT}"
    -L "127.0.0.1:${TUNNEL_WEB_PORT}:127.0.0.1:${WEB_PORT}"
    -L "127.0.0.1:${TUNNEL_S3_CONSOLE_PORT}:127.0.0.1:${MINIO_CONSOLE_PORT}"
  )
  TUNNEL_REVERSE=()
  if [[ "$DEPLOY_MODE" == hybrid ]]; then
    local host port
    host="${TEMPORAL_ADDRESS%:*}"
    port="${TEMPORAL_ADDRESS##*:}"
    if [[ "$host" == 127.0.0.1 || "$host" == localhost ]]; then
      TUNNEL_ARGS+=(-R "127.0.0.1:${port}:${TUNNEL_TEMPORAL_TARGET}")
      TUNNEL_REVERSE+=("Temporal: instance 127.0.0.1:${port} -> this machine ${TUNNEL_TEMPORAL_TARGET}")
    fi
    host="${MINIO_ENDPOINT%:*}"
    port="${MINIO_ENDPOINT##*:}"
    if [[ "$host" == 127.0.0.1 || "$host" == localhost ]]; then
      TUNNEL_ARGS+=(-R "127.0.0.1:${port}:${TUNNEL_S3_TARGET}")
      TUNNEL_REVERSE+=("S3: instance 127.0.0.1:${port} -> this machine ${TUNNEL_S3_TARGET}")
    fi
  fi
}

summary() {
  tunnel_args
  local verb="Deployed"
  ((DRY_RUN)) && verb="Dry run for"
  cat <<SUMMARY
${verb} ${WHERE}:${REMOTE_DIR} (mode ${DEPLOY_MODE}) in $(elapsed)
  done:        ${RESULT_ACTION}
  tunnel:      ${PROGRAM_NAME}${ENV_FILE_FLAG} tunnel
               (ssh -N -p ${VAST_PORT} -i ${VAST_SSH_KEY} $(printf '%s ' "${TUNNEL_ARGS[@]:2}")${TARGET})
  then open:   API docs    http://127.0.0.1:${TUNNEL_API_PORT}/docs
               dashboard   http://127.0.0.1:${TUNNEL_WEB_PORT}/
               S3 console  http://127.0.0.1:${TUNNEL_S3_CONSOLE_PORT}/
  status:      ${PROGRAM_NAME}${ENV_FILE_FLAG} status
  logs:        ${PROGRAM_NAME}${ENV_FILE_FLAG} logs fastapi -f
SUMMARY
}

# ---------------------------------------------------------------------------------------
# Commands

# no_arguments COMMAND ARGS...: dies unless ARGS is empty, naming an unknown flag as such.
no_arguments() {
  local command="$1"
  shift
  (($# == 0)) && return 0
  [[ "$1" == -* ]] && die "${command}: unknown flag '$1'; see ${PROGRAM_NAME} --help"
  die "${command} takes no arguments (got: $*)"
}

# Dies with the reason when a remote command of `status`, `logs` or `ssh` ended badly.
explain_remote_status() {
  local rc="$1"
  case "$rc" in
    0) return 0 ;;
    3) die "nothing is deployed in ${REMOTE_DIR} on ${WHERE}: run ${PROGRAM_NAME} first" ;;
  esac
  return "$rc"
}

cmd_deploy() {
  no_arguments deploy "$@"
  preflight
  acquire_lock
  sync_code
  upload_env
  converge
  release_lock
  summary
}

cmd_status() {
  no_arguments status "$@"
  prepare_ssh
  connect
  local script rc=0
  script="$(cat <<'SH'
in_project >/dev/null
echo "${REMOTE_DIR} (mode ${DEPLOY_MODE})"
exec "$PYTHON" -m scripts.instance.health status
SH
)"
  remote run "status" "$script" || rc=$?
  ((rc != 255)) || die "lost the SSH connection to ${WHERE}"
  explain_remote_status "$rc" || die "the stack on ${WHERE} is not healthy (see above)"
}

cmd_logs() {
  local program="" follow=0 lines=100
  while (($#)); do
    case "$1" in
      -f | --follow) follow=1 ;;
      -n | --lines)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "$1 needs a number of lines"
        lines="$2"
        shift ;;
      -*) die "logs: unknown option $1" ;;
      *)
        [[ -z "$program" ]] || die "logs takes one program (got $program and $1)"
        program="$1" ;;
    esac
    shift
  done
  if [[ -n "$program" && " ${PROGRAMS[*]} supervisord " != *" ${program} "* ]]; then
    die "logs: unknown program '${program}'; one of: ${PROGRAMS[*]} supervisord"
  fi
  prepare_ssh
  local script
  script="$(
    printf 'program=%q\nlines=%q\nfollow=%q\n' "$program" "$lines" "$follow"
    cat <<'SH'
in_project >/dev/null
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
SH
  )"
  connect
  local rc=0
  remote attached "logs ${program:-(all)}" "$script" || rc=$?
  ((rc != 4)) || die "logs: no log yet for ${program:-any program} on ${WHERE} (nothing has run there yet)"
  explain_remote_status "$rc"
}

cmd_tunnel() {
  no_arguments tunnel "$@"
  prepare_ssh
  tunnel_args
  local port
  for port in "$TUNNEL_API_PORT" "$TUNNEL_WEB_PORT" "$TUNNEL_S3_CONSOLE_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
      die "local port ${port} is already in use: stop what listens there or set TUNNEL_API_PORT / TUNNEL_WEB_PORT / TUNNEL_S3_CONSOLE_PORT"
    fi
  done
  log "tunnel: connecting to ${WHERE}"
  remote tunnel "tunnel" "${TUNNEL_ARGS[@]}"
}

# Printed once the tunnel is up.
tunnel_banner() {
  log "tunnel to ${WHERE} is up (Ctrl-C to stop):"
  log "  API docs    http://127.0.0.1:${TUNNEL_API_PORT}/docs   -> instance 127.0.0.1:${API_PORT}"
  log "  dashboard   http://127.0.0.1:${TUNNEL_WEB_PORT}/       -> instance 127.0.0.1:${WEB_PORT}"
  log "  S3 console  http://127.0.0.1:${TUNNEL_S3_CONSOLE_PORT}/       -> instance 127.0.0.1:${MINIO_CONSOLE_PORT}"
  local reverse
  for reverse in "${TUNNEL_REVERSE[@]}"; do
    log "  ${reverse}"
  done
}

cmd_stop() {
  no_arguments stop "$@"
  prepare_ssh
  connect
  acquire_lock
  local script
  script="$(cat <<'SH'
in_project >/dev/null
scripts/stop_services.sh </dev/null
SH
)"
  if ((DRY_RUN)); then
    remote run "stop every service" "$script"
    return 0
  fi
  remote run "stop every service" "$script" 2>&1 | sed 's/^/[deploy]   /' >&2 \
    || die "stopping the services on ${WHERE} failed (see above)"
  release_lock
  local data="${DATA_DIR}"
  [[ "$data" == /* ]] || data="${REMOTE_DIR}/${data#./}"
  log "stopped the services on ${WHERE} (data in ${data} is kept)"
}

cmd_ssh() {
  prepare_ssh
  local script
  if (($#)); then
    script="cd -- \"\$REMOTE_DIR\" && exec$(printf ' %q' "$@")"
  else
    # shellcheck disable=SC2016  # expanded on the instance
    script='cd -- "$REMOTE_DIR" 2>/dev/null || cd; exec "${SHELL:-bash}" -l'
  fi
  connect
  # The remote command's own exit status is passed on.
  remote attached "shell" "$script"
}

cmd_offers() {
  no_arguments offers "$@"
  local query='gpu_name in [RTX_3090,RTX_4090] num_gpus=1 gpu_ram>=24 disk_space>=50 reliability>0.98 rentable=true'
  local image
  image="$(image_hint)"
  echo "Recommended: one RTX 3090 or 4090 (24 GB), at least 50 GB of disk, the project's image."
  echo "  vastai search offers $(sq "$query") -o dph_total"
  echo "  vastai create instance OFFER_ID --image $(sq "$image") --disk 50 --ssh --direct"
  if command -v vastai >/dev/null 2>&1; then
    if ((DRY_RUN)); then
      echo "[dry-run] would run the search above"
      return 0
    fi
    vastai search offers "$query" -o dph_total
  else
    echo "(the vastai CLI is not installed: pip install vastai, then vastai set api-key KEY)"
  fi
}

main() {
  local command="" args=()
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --env-file)
        [[ $# -ge 2 && -n "$2" ]] || die "--env-file needs a file"
        ENV_FILE_PATH="$2"
        [[ "$ENV_FILE_PATH" == /* ]] || ENV_FILE_PATH="${PWD}/${ENV_FILE_PATH}"
        ENV_FILE_GIVEN=1
        shift ;;
      -h | --help) usage; exit 0 ;;
      --) shift; args+=("$@"); break ;;
      -*)
        # Flags after a command are that command's (logs -f); before one, only the above.
        [[ -n "$command" ]] || die "unknown flag '$1'; see ${PROGRAM_NAME} --help"
        args+=("$1") ;;
      *)
        if [[ -n "$command" ]]; then
          args+=("$1")
        else
          command="$1"
          # Everything after `ssh` is the remote command, flags included.
          if [[ "$command" == ssh ]]; then shift; args+=("$@"); break; fi
        fi ;;
    esac
    shift
  done
  command="${command:-deploy}"
  if [[ "${DEPLOY_TRACE:-0}" == 1 ]]; then set -x; fi
  START_US="$(now_us)"
  trap cleanup EXIT

  if [[ "$command" == fleet ]]; then
    # Every member of a fleet file, in parallel: scripts/fleet.py runs this script per member.
    if ((DRY_RUN)); then args=(--dry-run "${args[@]}"); fi
    exec python3 "${PROJECT_ROOT}/scripts/fleet.py" "${args[@]}"
  fi
  [[ " ${COMMANDS[*]} " == *" ${command} "* ]] \
    || die "unknown command '${command}'; see ${PROGRAM_NAME} --help"
  if [[ " ${NO_SETTINGS_COMMANDS[*]} " == *" ${command} "* ]]; then
    # Settings are optional here: read what the file has, check nothing.
    if [[ -f "${ENV_FILE_PATH:-${PROJECT_ROOT}/.env}" ]]; then
      read_env_file "${ENV_FILE_PATH:-${PROJECT_ROOT}/.env}"
    fi
    VAST_IMAGE="$(setting VAST_IMAGE "")"
  else
    load_config
  fi
  ENV_FILE_FLAG="$(env_file_flag)"
  readonly DRY_RUN ENV_FILE_FLAG
  "cmd_${command}" "${args[@]}"
}

main "$@"
