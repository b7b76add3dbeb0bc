"""The batch lifecycle, defined once: every state, which are final, the legal transitions,
the timestamp each state sets, the state each way of ending gives, the CLI's exit code of
each final state, and the completion window. The stored status (`kernel.status`), the read
view (`kernel.view`), the API, the CLI, the dashboard and the metrics all derive from here.

    validating ─► in_progress ─► finalizing ─► completed
        │             │  │           │
        │             │  └──────────────────► expired      (completion window ran out)
        │             ▼              ▼
        └────────► cancelling ◄──────┘  ─► cancelled       (a cancel, or the budget)
    any state that is not final ─► failed                  (no valid line, or the run died)

A batch stopped by its budget (`max_cost_usd`) ends `cancelled`, as OpenAI's batch object
has no budget state (its clients validate `status` against OpenAI's list): the stored
status says why in `end_reason` ("budget") and in `errors.message`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

BatchState = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
    "expired",
]
# Why a batch ended. Every reason gives one final state (END_STATE).
EndReason = Literal["completed", "failed", "cancelled", "expired", "budget"]

# CLI exit codes. 2 (usage) and 4 (API unreachable) are the CLI's own; the others are the
# final states' (EXIT_CODE below).
EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_UNREACHABLE = 4
EXIT_EXPIRED = 5


@dataclass(frozen=True)
class StateInfo:
    """One state of the lifecycle."""

    name: BatchState
    final: bool
    # The status field holding when the batch entered this state (Unix seconds).
    timestamp: str
    # The states a batch in this state may move to next.
    next: frozenset[BatchState]
    # `llm-batch status` / `watch` exit code for a batch that ended in this state (None:
    # the state is not final).
    exit_code: int | None
    meaning: str


def _state(
    name: BatchState, next_states: tuple[BatchState, ...], exit_code: int | None, meaning: str
) -> StateInfo:
    return StateInfo(
        name=name,
        final=exit_code is not None,
        # A batch is created validating: OpenAI's batch object has no `validating_at`.
        timestamp="created_at" if name == "validating" else f"{name}_at",
        next=frozenset(next_states),
        exit_code=exit_code,
        meaning=meaning,
    )


STATES: dict[BatchState, StateInfo] = {
    info.name: info
    for info in (
        _state(
            "validating",
            ("in_progress", "cancelling", "failed"),
            None,
            "the input is being read, checked and split into shards",
        ),
        _state(
            "in_progress",
            ("finalizing", "cancelling", "expired", "failed"),
            None,
            "shards are running on llama-server",
        ),
        _state(
            "finalizing",
            ("completed", "cancelling", "failed"),
            None,
            "every shard finished; the output and error files are being merged",
        ),
        _state(
            "cancelling",
            ("cancelled", "failed"),
            None,
            "a cancel (or the budget) stopped the running shards; what finished is merged",
        ),
        _state("completed", (), EXIT_COMPLETED, "every request ran; the files are whole"),
        _state(
            "failed",
            (),
            EXIT_FAILED,
            "no valid request line, or the batch workflow failed or was terminated",
        ),
        _state(
            "cancelled",
            (),
            EXIT_CANCELLED,
            "cancelled, or stopped by its budget (end_reason 'budget'); finished results kept",
        ),
        _state(
            "expired",
            (),
            EXIT_EXPIRED,
            "the completion window ran out; what finished is in the files",
        ),
    )
}
assert set(STATES) == set(get_args(BatchState))

ALL_STATES: tuple[BatchState, ...] = tuple(STATES)
FINAL_STATES: frozenset[BatchState] = frozenset(s for s, info in STATES.items() if info.final)
TIMESTAMP_FIELDS: tuple[str, ...] = tuple(info.timestamp for info in STATES.values())

# The state each way of ending gives, and the reason a final state stands for by default.
END_STATE: dict[EndReason, BatchState] = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "expired": "expired",
    "budget": "cancelled",
}
assert set(END_STATE) == set(get_args(EndReason))
assert set(END_STATE.values()) == FINAL_STATES


def is_final(state: str) -> bool:
    return state in FINAL_STATES


def timestamp_field(state: BatchState) -> str:
    """The status field `state` sets when the batch enters it, e.g. `expired_at`."""
    return STATES[state].timestamp


def can_move(current: BatchState, to: BatchState) -> bool:
    """Whether `current` → `to` is a legal transition (staying put always is)."""
    return to == current or to in STATES[current].next


def exit_code(state: str) -> int:
    """The CLI's exit code for a batch in `state`: the final state's, else 0."""
    info = STATES.get(state)  # type: ignore[call-overload]
    if info is None or info.exit_code is None:
        return EXIT_COMPLETED
    code: int = info.exit_code
    return code


# The completion window ----------------------------------------------------------------------

# OpenAI's "24h", or any "<N>s", "<N>m", "<N>h" (short ones make expiry testable). Expiry
# is measured from the batch's creation.
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600}
MAX_COMPLETION_WINDOW_S = 30 * 24 * 3600


def completion_window_seconds(window: str) -> int:
    """Seconds in a completion window such as "24h" or "90s"; ValueError when malformed."""
    text = window.strip()
    unit = text[-1:]
    if unit not in _WINDOW_UNITS or not text[:-1].isdigit():
        raise ValueError(
            f"completion_window {window!r} must be a number followed by s, m or h (e.g. '24h')"
        )
    seconds = int(text[:-1]) * _WINDOW_UNITS[unit]
    if not 1 <= seconds <= MAX_COMPLETION_WINDOW_S:
        raise ValueError(f"completion_window {window!r} must be between 1s and 720h")
    return seconds
