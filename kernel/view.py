"""The read view of a batch: its stored status plus the rates, time left and cost worked
out at an explicit `now` (the caller's clock; nothing here reads one).

Every rate divides by the batch's elapsed time, which stops at `ended_at` once the batch is
final (whichever final state), so two reads of a finished batch are equal however far
apart. A batch still merging (`finalizing`) or stopping (`cancelling`) counts to when it
entered that state: no request is answered after it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from kernel.lifecycle import TIMESTAMP_FIELDS, is_final, timestamp_field
from kernel.status import BatchStatus, BoxCost


def box_seconds_billed(gpu_seconds: float, elapsed_s: float) -> float:
    """The time one box is paid for: its finished shards' slot time (`gpu_seconds`), capped
    at the batch's wall time (several shards share one box's slots at once, so their slot
    times overlap)."""
    return min(gpu_seconds, elapsed_s) if elapsed_s > 0 else gpu_seconds


def priced_boxes(
    box_costs: Mapping[str, BoxCost], price_per_hour: float | None, elapsed_s: float
) -> dict[str, BoxCost]:
    """Each box's cost: its own price (the one its shards reported), else `price_per_hour`
    (the batch's), times its billed time; the price and cost stay null without either."""
    priced: dict[str, BoxCost] = {}
    for name, box in box_costs.items():
        price = box.price_per_hour or price_per_hour or None
        cost = None
        if price is not None:
            cost = price * box_seconds_billed(box.gpu_seconds, elapsed_s) / 3600
        priced[name] = BoxCost(gpu_seconds=box.gpu_seconds, price_per_hour=price, cost_usd=cost)
    return priced


def batch_cost_usd(
    price_per_hour: float | None,
    gpu_seconds: float,
    elapsed_s: float,
    box_count: int,
    box_costs: Mapping[str, BoxCost] | None = None,
) -> float | None:
    """What a batch cost so far: the sum over the boxes it used of each box's price per
    hour times the box time it held there (`priced_boxes`); slot time no box claimed is
    paid at `price_per_hour`. None when a box's price, or the price of the unclaimed time,
    is unknown.

    Batches published before the per-box breakdown (no `box_costs`) have one price for all:
    `price_per_hour` times the finished shards' slot time, capped at the batch's wall time
    on each box that answered.
    """
    if not box_costs:
        if not price_per_hour:
            return None
        box_seconds = gpu_seconds
        if elapsed_s > 0 and box_count > 0:
            box_seconds = min(gpu_seconds, elapsed_s * box_count)
        return price_per_hour * box_seconds / 3600
    total = 0.0
    for box in priced_boxes(box_costs, price_per_hour, elapsed_s).values():
        if box.cost_usd is None:
            return None
        total += box.cost_usd
    # Published seconds are rounded to the millisecond: a few of them do not make a claim.
    unclaimed = gpu_seconds - sum(box.gpu_seconds for box in box_costs.values())
    if unclaimed > 0.01:
        if not price_per_hour:
            return None
        total += price_per_hour * box_seconds_billed(unclaimed, elapsed_s) / 3600
    return total


def ended_at(batch: BatchStatus) -> int | None:
    """When a final batch ended: its final state's timestamp, else (a batch whose run was
    terminated before it could publish one) the latest timestamp it has. None while the
    batch is not final."""
    if not is_final(batch.status):
        return None
    own: int | None = getattr(batch, timestamp_field(batch.status))
    if own is not None:
        return own
    known = [getattr(batch, name) for name in TIMESTAMP_FIELDS]
    stamps = [stamp for stamp in known if stamp is not None]
    return max(stamps) if stamps else batch.created_at


def _rates_end(batch: BatchStatus, now: float) -> float:
    """The end of the time the rates divide by."""
    end = ended_at(batch)
    if end is not None:
        return float(end)
    if batch.status in ("finalizing", "cancelling"):
        entered: int | None = getattr(batch, timestamp_field(batch.status))
        if entered is not None:
            return float(entered)
    return now


class BatchView(BatchStatus):
    """A batch as the API returns it: the stored status, whether it is final and when it
    ended, and the rates and cost at the moment it was read."""

    is_terminal: bool = Field(
        default=False,
        description="True in every final state (completed, failed, cancelled, "
        "expired): nothing about the batch changes any more.",
    )
    ended_at: int | None = Field(
        default=None, description="When the batch reached its final state (null until then)."
    )
    elapsed_seconds: float | None = Field(
        default=None,
        description="Seconds since the first shard could start (to ended_at once final).",
    )
    requests_per_second: float | None = Field(
        default=None, description="Requests answered (or failed) per second."
    )
    tokens_per_second: float | None = Field(
        default=None,
        description="Tokens (prompt plus completion, from the responses' usage) per second.",
    )
    output_tokens_per_second: float | None = Field(
        default=None, description="Completion tokens per second."
    )
    seconds_left: float | None = Field(
        default=None,
        description="Seconds left at the current rate (0 once final; null before a rate).",
    )
    cost_usd: float | None = Field(
        default=None,
        description="USD so far: the sum over box_costs (each box's price per hour times the "
        "box time the batch held there).",
    )
    usd_per_million_output_tokens: float | None = Field(
        default=None, description="USD per million completion tokens so far."
    )
    retried_by: list[str] = Field(
        default_factory=list,
        description="The batches made of this one's failed or unfinished lines, oldest first.",
    )

    @classmethod
    def of(cls, batch: BatchStatus, now: float) -> BatchView:
        """`batch` read at `now` (Unix seconds)."""
        final = is_final(batch.status)
        elapsed: float | None = None
        if batch.in_progress_at is not None:
            elapsed = round(max(0.0, _rates_end(batch, now) - batch.in_progress_at), 3)
        # Timestamps are whole seconds: a batch done within one counts as one second.
        per = None if elapsed is None else max(1.0, elapsed)
        counts, usage = batch.request_counts, batch.usage
        done = counts.completed + counts.failed
        rps = None if per is None else round(done / per, 3)
        seconds_left: float | None
        if final:
            seconds_left = 0.0
        elif not rps:
            seconds_left = None
        else:
            seconds_left = round(max(0, counts.total - done) / rps, 1)
        cost = batch_cost_usd(
            batch.gpu_price_per_hour,
            batch.gpu_seconds,
            elapsed or 0.0,
            len(batch.boxes),
            batch.box_costs,
        )
        cost = None if cost is None else round(cost, 6)
        box_costs = {
            name: box.model_copy(
                update={"cost_usd": None if box.cost_usd is None else round(box.cost_usd, 6)}
            )
            for name, box in priced_boxes(
                batch.box_costs, batch.gpu_price_per_hour, elapsed or 0.0
            ).items()
        }
        per_million = None
        if cost is not None and usage.output_tokens:
            per_million = round(cost * 1_000_000 / usage.output_tokens, 4)
        return cls(
            **{**batch.model_dump(), "box_costs": box_costs},
            is_terminal=final,
            ended_at=ended_at(batch),
            elapsed_seconds=elapsed,
            requests_per_second=rps,
            tokens_per_second=None if per is None else round(usage.total_tokens / per, 3),
            output_tokens_per_second=None if per is None else round(usage.output_tokens / per, 3),
            seconds_left=seconds_left,
            cost_usd=cost,
            usd_per_million_output_tokens=per_million,
        )

    def stored(self) -> BatchStatus:
        """The stored status this view was read from."""
        return BatchStatus.model_validate(self.model_dump(include=set(BatchStatus.model_fields)))
