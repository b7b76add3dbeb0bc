"""`llm-batch`: submit, watch and fetch batches over the HTTP API.

Exit codes (the final states' come from `kernel.lifecycle`): 0 the batch completed (or
the command did what it was asked), 1 the batch failed or the API answered an error, 2 a
usage error, 3 the batch was cancelled (by a cancel or its budget), 4 the API could not be
reached, 5 the batch expired (its completion window ran out).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text
from typer._click import exceptions as usage  # typer 0.29 vendors click

from cli.client import (
    Api,
    ApiError,
    ApiUnreachable,
    InputLineError,
    SettingsInvalid,
    check_jsonl_file,
    resolve,
)
from kernel import lifecycle
from kernel.lifecycle import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE

POLL_SECONDS = 1.0
PROG = "llm-batch"


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors as one line (`llm-batch: error: ...; see llm-batch --help`, exit 2)
    instead of click's multi-line box, and a refused `.env` value as the settings check's
    line; no arguments still print the help."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        call = (args, prog_name, complete_var, False, windows_expand_args)
        if not standalone_mode:
            return super().main(*call, **extra)
        try:
            code = super().main(*call, **extra)
        except usage.NoArgsIsHelpError as exc:  # the help is already printed
            sys.exit(exc.exit_code)
        except usage.ClickException as exc:
            sys.stderr.write(one_line_error(exc) + "\n")
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.stderr.write(f"{PROG}: aborted\n")
            sys.exit(1)
        except SettingsInvalid as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.exit(EXIT_USAGE)
        sys.exit(code if isinstance(code, int) else 0)


def one_line_error(exc: usage.ClickException) -> str:
    """`llm-batch: error: MESSAGE; see llm-batch [COMMAND] --help` on one line."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if not isinstance(exc, usage.UsageError):
        return f"{PROG}: error: {message}"
    names: list[str] = []
    ctx = exc.ctx
    while ctx is not None and ctx.parent is not None:  # the root is named PROG, however run
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return f"{PROG}: error: {message}; see {' '.join([PROG, *names])} --help"


app = typer.Typer(
    name="llm-batch",
    cls=OneLineErrors,
    help="Submit, watch and fetch LLM batches over the API (URL and key from flags, "
    "LLM_BATCH_URL / LLM_BATCH_API_KEY, or .env).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output is not cut at 80 columns: tables stay whole for grep and logs.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


class State:
    api: Api
    json: bool = False


state = State()


@app.callback()
def main(
    url: Annotated[
        str | None, typer.Option(help="API base URL (default: LLM_BATCH_URL, then .env)")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="API key (default: LLM_BATCH_API_KEY or API_KEY, then .env)"),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="print JSON (for scripts) instead of tables")
    ] = False,
) -> None:
    state.api = Api(resolve(url, api_key))
    state.json = json_output


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=None) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """One line on stderr; the caller raises the returned Exit."""
    sys.stderr.write(f"error: {message}\n")
    return typer.Exit(code)


def ended(batch: dict[str, Any]) -> bool:
    """Whether the batch is final, as the API says (`is_terminal`); an API from before
    that field is read with the kernel's lifecycle."""
    if "is_terminal" in batch:
        return bool(batch["is_terminal"])
    return lifecycle.is_final(str(batch.get("status", "")))


def exit_code(batch: dict[str, Any]) -> int:
    """The final state's exit code (kernel.lifecycle); 0 while the batch runs."""
    return lifecycle.exit_code(str(batch.get("status", ""))) if ended(batch) else 0


# Formatting ---------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def rate(value: float | None, unit: str) -> str:
    if value is None:
        return f"– {unit}"
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}"


def money(value: float | None) -> str:
    if value is None:
        return "cost unknown"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def box_cost_text(box: dict[str, Any]) -> str:
    """One box's share of the cost: its GPU time, its price and what they cost."""
    price = box.get("price_per_hour")
    at = f"${price:g}/h" if price is not None else "no price"
    return f"{box.get('gpu_seconds', 0):.1f}s GPU at {at}: {money(box.get('cost_usd'))}"


def progress_line(batch: dict[str, Any]) -> str:
    counts = batch.get("request_counts") or {}
    done = counts.get("completed", 0) + counts.get("failed", 0)
    parts = [
        f"{batch['id']} {batch['status']}",
        f"{done}/{counts.get('total', 0)} done ({counts.get('failed', 0)} failed)",
        rate(batch.get("requests_per_second"), "req/s"),
        rate(batch.get("tokens_per_second"), "tok/s"),
        f"{duration(batch.get('seconds_left'))} left",
        money(batch.get("cost_usd")),
    ]
    per_million = batch.get("usd_per_million_output_tokens")
    if per_million is not None:
        parts.append(f"${per_million:,.2f}/M output tokens")
    return ", ".join(parts)


def batch_table(batch: dict[str, Any]) -> Table:
    counts = batch.get("request_counts") or {}
    usage = batch.get("usage") or {}
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str]] = [
        ("id", batch["id"]),
        ("status", _status_text(batch)),
        ("endpoint", str(batch.get("endpoint"))),
        (
            "requests",
            f"{counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed "
            f"of {counts.get('total', 0)}",
        ),
        (
            "tokens",
            f"{usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out",
        ),
        (
            "rate",
            f"{rate(batch.get('requests_per_second'), 'req/s')}, "
            f"{rate(batch.get('tokens_per_second'), 'tok/s')}",
        ),
        ("elapsed", duration(batch.get("elapsed_seconds"))),
        ("time left", duration(batch.get("seconds_left"))),
        ("GPU time", f"{batch.get('gpu_seconds', 0):.1f}s"),
        (
            "cost",
            money(batch["cost_usd"])
            if batch.get("cost_usd") is not None
            else "unknown: no box price (set GPU_PRICE_PER_HOUR on the box)",
        ),
    ]
    if batch.get("usd_per_million_output_tokens") is not None:
        rows.append(("$/M output", f"${batch['usd_per_million_output_tokens']:,.2f}"))
    if batch.get("max_cost_usd") is not None:
        rows.append(("budget", money(batch["max_cost_usd"])))
    if batch.get("boxes"):
        rows.append(("boxes", ", ".join(f"{k}: {v}" for k, v in batch["boxes"].items())))
    for name, box in (batch.get("box_costs") or {}).items():
        rows.append((f"  {name}", box_cost_text(box)))
    if batch.get("errors"):
        rows.append(("error", str(batch["errors"].get("message"))))
    for key in ("output_key", "error_key"):
        if batch.get(key):
            rows.append((key, batch[key]))
    if batch.get("retry_of"):
        rows.append(("retry of", str(batch["retry_of"])))
    if batch.get("retried_by"):
        rows.append(("retried by", ", ".join(batch["retried_by"])))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _status_text(batch: dict[str, Any]) -> str:
    """The state, with why it ended when the state alone does not say (a budget stop)."""
    reason = batch.get("end_reason")
    if reason and reason != batch["status"]:
        return f"{batch['status']} ({reason})"
    return str(batch["status"])


class RateColumn(ProgressColumn):
    """requests/s, tokens/s, time left and cost, as the API computes them."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        batch: dict[str, Any] = task.fields.get("batch") or {}
        text = (
            f"{rate(batch.get('requests_per_second'), 'req/s')} · "
            f"{rate(batch.get('tokens_per_second'), 'tok/s')} · "
            f"{duration(batch.get('seconds_left'))} left · {money(batch.get('cost_usd'))}"
        )
        return Text(text, style="cyan")


# Commands -----------------------------------------------------------------------------------


def watch_batch(batch_id: str, interval: float = POLL_SECONDS) -> dict[str, Any]:
    """Polls the batch until it ends; a live bar on a terminal, a line per change otherwise."""
    api = state.api
    batch = api.batch(batch_id)
    if state.json:
        while not ended(batch):
            time.sleep(interval)
            batch = api.batch(batch_id)
        return batch
    if not err.is_terminal:
        last = ""
        while True:
            line = progress_line(batch)
            if line != last:
                err.print(line, markup=False, soft_wrap=True)
                last = line
            if ended(batch):
                return batch
            time.sleep(interval)
            batch = api.batch(batch_id)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        counts = batch["request_counts"]
        task = bar.add_task(batch["status"], total=counts["total"] or None, batch=batch)
        while True:
            counts = batch["request_counts"]
            bar.update(
                task,
                description=batch["status"],
                total=counts["total"] or None,
                completed=counts["completed"] + counts["failed"],
                batch=batch,
            )
            if ended(batch):
                break
            time.sleep(interval)
            batch = api.batch(batch_id)
    return batch


def finish(batch: dict[str, Any]) -> None:
    if state.json:
        _emit_json(batch)
    else:
        out.print(batch_table(batch))
    raise typer.Exit(exit_code(batch))


def parse_metadata(pairs: list[str] | None) -> dict[str, str]:
    """`--metadata KEY=VALUE` options as a dict; a pair without `=` or key is a usage error."""
    result: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--metadata takes KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def size_text(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def upload_file(path: Path) -> dict[str, Any]:
    """Checks the file's lines, then streams it to the API, both a chunk at a time; a live
    bar (bytes, lines, %) on a terminal, one line when done otherwise. A line that is not a
    JSON object stops it before anything is sent (exit 2)."""
    total = path.stat().st_size
    try:
        if err.is_terminal and not state.json:
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[lines]:,} lines"),
                TransferSpeedColumn(),
            )
            with Progress(*columns, console=err, transient=False) as bar:
                checked = bar.add_task("check", total=total or None, lines=0)
                check_jsonl_file(
                    path, lambda done, lines: bar.update(checked, completed=done, lines=lines)
                )
                sent = bar.add_task("upload", total=total or None, lines=0)
                uploaded = state.api.upload(
                    path, lambda done, lines: bar.update(sent, completed=done, lines=lines)
                )
        else:
            check_jsonl_file(path)
            uploaded = state.api.upload(path)
    except InputLineError as exc:
        raise fail(f"{path}:{exc.number}: {exc.message}") from None
    if not state.json:
        err.print(
            f"uploaded {path.name}: {uploaded['lines']:,} lines, {size_text(total)} (100%) "
            f"as {uploaded['id']}",
            markup=False,
            soft_wrap=True,
        )
    return uploaded


@app.command()
def submit(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, metavar="FILE", help="JSONL of request lines"),
    ],
    endpoint: Annotated[
        str, typer.Option(help="default url of lines without one")
    ] = "/v1/chat/completions",
    defaults: Annotated[
        str | None, typer.Option(help="JSON merged into every body, e.g. '{\"max_tokens\": 64}'")
    ] = None,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable")] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="budget in USD (max_cost_usd)")
    ] = None,
    shard_size: Annotated[int | None, typer.Option(help="requests per shard")] = None,
    completion_window: Annotated[
        str | None,
        typer.Option(help="time limit such as 24h, 30m or 90s: then the batch ends 'expired'"),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="a unique string: a retry with it gets the first batch, not a second"),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="watch it until it ends")] = False,
) -> None:
    """Submit a JSONL file of any size as a batch: streamed to /v1/files, then POST /batch."""
    body: dict[str, Any] = {"endpoint": endpoint}
    if defaults:
        try:
            body["defaults"] = json.loads(defaults)
        except json.JSONDecodeError as exc:
            raise fail(f"--defaults is not JSON: {exc.msg}") from None
        if not isinstance(body["defaults"], dict):
            raise fail("--defaults must be a JSON object")
    if metadata:
        body["metadata"] = parse_metadata(metadata)
    if max_cost is not None:
        body["max_cost_usd"] = max_cost
    if shard_size is not None:
        body["shard_size"] = shard_size
    if completion_window is not None:
        body["completion_window"] = completion_window
    existing = state.api.batch_for_key(idempotency_key) if idempotency_key else None
    if existing is not None:
        # A retry of a submit that reached the API: its batch, without sending the file again.
        if not state.json:
            err.print(
                f"{existing['id']} was already submitted with this idempotency key; "
                "nothing uploaded",
                markup=False,
                soft_wrap=True,
            )
        batch, lines = existing, (existing.get("request_counts") or {}).get("total", 0)
    else:
        batch, lines = submit_upload(file, body, idempotency_key)
    if not watch:
        if state.json:
            _emit_json(batch)
        else:
            out.print(f"{batch['id']} {batch['status']} ({lines} requests)", markup=False)
            err.print(f"follow it with: llm-batch watch {batch['id']}", markup=False)
        return
    if not state.json:
        err.print(f"submitted {batch['id']} ({lines} requests)")
    finish(watch_batch(batch["id"]))


def submit_upload(
    file: Path, body: dict[str, Any], idempotency_key: str | None
) -> tuple[dict[str, Any], int]:
    """Uploads the file and starts a batch reading it: (batch, request lines)."""
    uploaded = upload_file(file)
    try:
        batch = state.api.submit_file(uploaded["id"], body, idempotency_key)
    except ApiError as exc:
        # Refused (4xx): no batch reads the upload, so remove it (best effort). After a 5xx
        # a batch may have started on it: keep it.
        if 400 <= exc.status < 500:
            try:
                state.api.delete_file(uploaded["id"])
            except (ApiError, ApiUnreachable):
                pass
        raise
    return batch, int(uploaded["lines"])


@app.command()
def watch(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")],
    interval: Annotated[float, typer.Option(min=0.2, help="seconds between polls")] = 1.0,
) -> None:
    """Live progress until the batch ends: done of total, req/s, tok/s, time left, cost."""
    finish(watch_batch(batch_id, interval))


@app.command()
def status(batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")]) -> None:
    """One batch: counts, rates, time left, cost (exit 1 failed, 3 cancelled, 5 expired)."""
    finish(state.api.batch(batch_id))


@app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 20,
    status_filter: Annotated[
        str | None, typer.Option("--status", help="only batches in this state, e.g. completed")
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE: only batches with it in their metadata (repeatable: all)"),
    ] = None,
) -> None:
    """Recent batches, newest first, with their metadata."""
    batches = state.api.batches(limit, status_filter, parse_metadata(metadata))
    if state.json:
        _emit_json(batches)
        return
    headings = ("status", "done", "total", "req/s", "cost", "created", "metadata")
    table = Table(Column("id", no_wrap=True), *headings)
    for batch in batches:
        counts = batch.get("request_counts") or {}
        created = batch.get("created_at")
        table.add_row(
            batch["id"],
            batch["status"],
            str(counts.get("completed", 0) + counts.get("failed", 0)),
            str(counts.get("total", 0)),
            rate(batch.get("requests_per_second"), ""),
            money(batch.get("cost_usd")),
            time.strftime("%m-%d %H:%M", time.localtime(created)) if created else "",
            ", ".join(f"{k}={v}" for k, v in (batch.get("metadata") or {}).items()),
        )
    out.print(table)


def _download(batch_id: str, kind: str, output: Path | None, merged: bool = False) -> None:
    query = "?merged=true" if merged else ""
    chunks = state.api.stream_lines(f"/batch/{batch_id}/{kind}{query}")
    if output is None:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    partial = output.with_name(output.name + ".part")
    size = 0
    with partial.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            size += len(chunk)
    partial.replace(output)
    if not state.json:
        err.print(f"wrote {size} bytes to {output}")


@app.command()
def results(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="file (default stdout)")
    ] = None,
    merged: Annotated[
        bool,
        typer.Option(
            "--merged", help="one line per custom_id across the batch and its retries (newest wins)"
        ),
    ] = False,
) -> None:
    """The output lines (JSONL); partial while the batch runs."""
    _download(batch_id, "results", output, merged)


@app.command()
def errors(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="file (default stdout)")
    ] = None,
    merged: Annotated[
        bool,
        typer.Option(
            "--merged", help="across the batch and its retries: what no batch answered, once"
        ),
    ] = False,
) -> None:
    """The error lines (JSONL): invalid input lines and failed requests."""
    _download(batch_id, "errors", output, merged)


@app.command()
def cancel(batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")]) -> None:
    """Cancel a batch; its finished results are kept."""
    batch = state.api.cancel(batch_id)
    if state.json:
        _emit_json(batch)
    else:
        out.print(f"{batch['id']} {batch['status']}")


@app.command()
def retry(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="an ended batch's id")],
    failed: Annotated[
        bool, typer.Option("--failed", help="the requests that failed (neither flag: both)")
    ] = False,
    unfinished: Annotated[
        bool,
        typer.Option(
            "--unfinished", help="the requests a cancel, an expiry or the budget left unrun"
        ),
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="watch it until it ends")] = False,
) -> None:
    """A new batch of an ended batch's failed and/or unfinished requests, same settings."""
    if not failed and not unfinished:
        failed = unfinished = True
    batch = state.api.retry(batch_id, failed, unfinished)
    selection = batch.get("retry") or {}
    if not watch:
        if state.json:
            _emit_json(batch)
            return
        out.print(
            f"{batch['id']} {batch['status']} (retry of {batch_id})", markup=False, soft_wrap=True
        )
    elif not state.json:
        err.print(f"submitted {batch['id']} (retry of {batch_id})", markup=False, soft_wrap=True)
    if not state.json:
        sent = f"{selection.get('failed', 0)} failed, {selection.get('unfinished', 0)} unfinished"
        left = ", ".join(f"{n} {why}" for why, n in (selection.get("left_out") or {}).items())
        err.print(f"sent again: {sent}; left out: {left or 'none'}", markup=False, soft_wrap=True)
        if not watch:
            err.print(
                f"follow it with: llm-batch watch {batch['id']}", markup=False, soft_wrap=True
            )
    if watch:
        finish(watch_batch(batch["id"]))


@app.command()
def health() -> None:
    """The API and each dependency (exit 1 when degraded)."""
    report = state.api.health()
    if state.json:
        _emit_json(report)
    else:
        out.print(f"API {state.api.target.url}: {report.get('status')} (mode {report.get('mode')})")
        table = Table("check", "status", "message")
        for name, check in (report.get("checks") or {}).items():
            style = "green" if check.get("status") == "ok" else "red"
            table.add_row(
                name, Text(str(check.get("status")), style=style), check.get("message", "")
            )
        out.print(table)
    if report.get("status") != "ok":
        raise typer.Exit(EXIT_FAILED)


def run() -> None:
    """The console script: one clear line for an unreachable API or an API error."""
    try:
        app()
    except ApiUnreachable as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_UNREACHABLE) from None
    except ApiError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        err.print("interrupted (the batch keeps running; `llm-batch watch ID` to follow it)")
        raise SystemExit(130) from None
