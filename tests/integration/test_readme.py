"""The README is a contract: its examples run here, as written, against a private stack.

So is every page it links (docs/api.md, docs/operations.md, ...): the pages are read in the
order the README first links them, after the README itself, and follow the same convention.
Each page starts afresh: its own `vars` and ids, the settings file without the previous
page's edits, and the stack running (a page may stop it; the next one starts it again).
Every relative link of these pages must lead to a file, and an anchor to a heading there.

Convention for README.md and the pages it links (everyone adding a section follows it)
-------------------------------------------------------------------------------------
Every fenced block whose language is bash, sh, shell, console, python or py is an example
and must be preceded (blank lines allowed) by exactly one marker line:

    <!-- readme-test: run [OPTION ...] -->  run it here; it must exit 0 (or `exit=N`)
    <!-- readme-test: skip REASON -->       cannot run here; skipped by name with REASON,
                                            e.g. `skip needs a Vast instance`
    <!-- readme-test: vars -->              `NAME=value` lines (like `API=...`) that every
                                            later shell block starts with

An example without a marker fails `test_every_example_is_marked`, so nothing drifts
silently. Blocks in other languages (json, text, ...) are not run, but a ```json block
right after a `run` block (blank lines allowed) is its documented output: every key it
shows must be in the output. A key "…" stands for "more keys"; a list's first element
describes every element; a block of several JSON lines describes JSONL output, every
line of which must have the keys of one of them. Output shaped like an error
(`{"error": ...}`) fails a block unless its documented output is one.

Options of `run` (shell words, NAME=VALUE; quote values with spaces):
    exit=N          expected exit status (default 0)
    expect=REGEX    must match somewhere in stdout+stderr (multiline; may repeat)
    follow=SECONDS  the command runs until stopped (tail -F): stop it after SECONDS
    edit=LINE       first append LINE to the settings file (stands for editing .env)
    revert          first remove the lines `edit` added (stands for fixing .env)
    wait=done       first wait until the batches the block names are over
    needs=running-batch  the block's batch ids stand for a batch still running: the test
                    starts one (2,000 requests) and substitutes its id

How a block runs: from the repository root in a plain shell, `env -i PATH=(system dirs)
HOME=$HOME ENV_FILE=<the stack's settings file> bash -eo pipefail -c '<vars>; <block>'`
(nothing exported by make or pytest leaks in); Python blocks run with `.venv/bin/python`
in the same environment. Before running, the test substitutes:
  - the default addresses 127.0.0.1:8000 (API), :3000 (dashboard), :9000 (S3),
    :7233 (Temporal), :8233 (Temporal UI), also as localhost:PORT, by the stack's;
  - `.env` (the word, not `.env.example`) by the stack's settings file;
  - `make up` by `make -o setup up`: `make test` did the set-up before the tests ran;
  - a literal id `batch_<32 hex>` / `proc_<32 hex>` by the id a block before it produced:
    when a `run` block's documented JSON has a top-level "id", the output's "id" replaces
    that literal from then on (on that page). An id no earlier block of the page produced
    fails the block.

The stack is this module's own (the session one is shared; these examples stop and restart
theirs). Counts of examples run and skipped are printed at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import batches
from harness.stack import REPO_ROOT, Stack, stack_environment

pytestmark = pytest.mark.integration

README = REPO_ROOT / "README.md"
EXAMPLE_LANGUAGES = {"bash", "sh", "shell", "console", "python", "py"}
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<kind>[a-z-]+)(?P<rest>.*?)\s*-->\s*$")
FENCE = re.compile(r"^\s*```(?P<lang>[\w+-]*)\s*$")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*$")
PLACEHOLDER = re.compile(r"\b(?:batch|proc)_[0-9a-f]{32}\b")
RUN_OPTIONS = {"exit", "expect", "follow", "edit", "revert", "wait", "needs"}
ELLIPSIS = "…"


@dataclass
class Block:
    page: str  # path from the repository root: README.md, docs/api.md, ...
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    heading: str
    kind: str = ""  # run | skip | vars | "" (unmarked)
    reason: str = ""
    options: list[tuple[str, str]] = field(default_factory=list)
    documented: str | None = None  # the ```json block right after it
    name: str = ""

    def option(self, key: str, default: str = "") -> str:
        return next((v for k, v in self.options if k == key), default)

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.options if k == key]

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def parse_readme(text: str, page: str = "README.md") -> tuple[list[Block], list[str]]:
    """Every fenced block of one page with its marker, and the problems in the markers."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    heading = "top"
    marker: tuple[int, re.Match[str]] | None = None
    per_heading: dict[str, int] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if (m := HEADING.match(line)) is not None:
            heading = m["title"]
        if (m := MARKER.match(line)) is not None:
            if marker is not None:
                problems.append(f"{page}:{marker[0]}: marker not followed by a code block")
            marker = (i + 1, m)
            i += 1
            continue
        if (f := FENCE.match(line)) is None:
            if line.strip() and marker is not None:
                problems.append(f"{page}:{marker[0]}: marker not followed by a code block")
                marker = None
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not FENCE.match(lines[end]):
            end += 1
        indent = len(line) - len(line.lstrip())
        code = "\n".join(x[indent:] if x[:indent].isspace() else x for x in lines[i + 1 : end])
        block = Block(page=page, line=i + 1, lang=f["lang"].lower(), code=code, heading=heading)
        if marker is not None:
            block.kind = marker[1]["kind"]
            rest = marker[1]["rest"].strip()
            if block.kind == "skip":
                block.reason = rest
                if not rest:
                    problems.append(f"{page}:{marker[0]}: `skip` needs a reason")
            elif block.kind in ("run", "vars"):
                try:
                    for word in shlex.split(rest):
                        key, _, value = word.partition("=")
                        if key not in RUN_OPTIONS:
                            problems.append(f"{page}:{marker[0]}: unknown option {key!r}")
                        block.options.append((key, value))
                except ValueError as exc:
                    problems.append(f"{page}:{marker[0]}: {exc}")
            else:
                problems.append(f"{page}:{marker[0]}: unknown marker kind {block.kind!r}")
            if block.lang not in EXAMPLE_LANGUAGES:
                problems.append(
                    f"{page}:{marker[0]}: marker on a ```{block.lang} block "
                    f"(examples are {', '.join(sorted(EXAMPLE_LANGUAGES))})"
                )
            marker = None
        elif block.lang in EXAMPLE_LANGUAGES:
            problems.append(
                f"{page}:{block.line}: ```{block.lang} example under {heading!r} has no "
                "<!-- readme-test: run|skip REASON|vars --> marker"
            )
        if blocks and blocks[-1].kind == "run" and block.lang == "json":
            between = lines[blocks[-1].line : i]
            closing = next(n for n, x in enumerate(between) if FENCE.match(x))
            if not any(x.strip() for x in between[closing + 1 :]):
                blocks[-1].documented = code
        if block.lang in EXAMPLE_LANGUAGES or block.lang == "json":
            per_heading[heading] = per_heading.get(heading, 0) + (block.lang != "json")
            block.name = f"{heading} #{per_heading[heading]}"
            blocks.append(block)
        i = end + 1
    if marker is not None:
        problems.append(f"{page}:{marker[0]}: marker not followed by a code block")
    return [b for b in blocks if b.lang in EXAMPLE_LANGUAGES], problems


# Pages and links -------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str, inline_code: bool = False) -> str:
    """The page without its fenced blocks, and without inline code unless asked (links are
    not links there; headings keep theirs)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            kept.append("")
            continue
        kept.append("" if fenced else line if inline_code else INLINE_CODE.sub("", line))
    return "\n".join(kept)


def local_links(path: Path) -> list[tuple[int, Path, str]]:
    """(line, target file, anchor) of every link to a file of the repository."""
    found = []
    for number, line in enumerate(prose(path.read_text()).splitlines(), start=1):
        for m in LINK.finditer(line):
            target = m["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file, _, anchor = target.partition("#")
            found.append((number, (path.parent / file).resolve() if file else path, anchor))
    return found


def linked_pages(readme: Path) -> list[Path]:
    """The Markdown pages the README links, in the order it first links them."""
    pages: list[Path] = []
    for _, target, _ in local_links(readme):
        if target.suffix == ".md" and target != readme and target not in pages:
            pages.append(target)
    return pages


def anchors(path: Path) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    ids: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose(path.read_text(), inline_code=True).splitlines():
        if (m := HEADING.match(line)) is None:
            continue
        title = re.sub(r"[*`]|\[([^\]]*)\]\([^)]*\)", r"\1", m["title"]).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


PAGES = [README, *(p for p in linked_pages(README) if p.is_file())]
EXAMPLES: list[Block] = []
MARKER_PROBLEMS: list[str] = []
for _page in PAGES:
    _blocks, _problems = parse_readme(_page.read_text(), relative(_page))
    EXAMPLES += _blocks
    MARKER_PROBLEMS += _problems


def test_every_example_is_marked() -> None:
    assert not MARKER_PROBLEMS, "\n".join(MARKER_PROBLEMS)
    assert any(b.kind == "run" for b in EXAMPLES)
    assert len(PAGES) > 1, "the README links no page"


def test_every_link_leads_somewhere() -> None:
    """A link of the README or of a page it links names a file that exists, and a heading."""
    problems = []
    for page in PAGES:
        for line, target, anchor in local_links(page):
            where = f"{relative(page)}:{line}"
            if not target.exists():
                problems.append(f"{where}: no file {target}")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                problems.append(f"{where}: no heading #{anchor} in {relative(target)}")
    assert not problems, "\n".join(problems)


# Documented output ---------------------------------------------------------------------


def parse_documented(text: str) -> list[Any]:
    """One JSON value, or several (JSONL)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def missing_keys(documented: Any, actual: Any, path: str = "$") -> list[str]:
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {json.dumps(actual)[:80]}"]
        problems = []
        for key, value in documented.items():
            if key == ELLIPSIS:
                continue
            if key not in actual:
                problems.append(f"{path}.{key}: missing")
            else:
                problems += missing_keys(value, actual[key], f"{path}.{key}")
        return problems
    if isinstance(documented, list) and documented:
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {json.dumps(actual)[:80]}"]
        return [
            p
            for n, item in enumerate(actual)
            for p in missing_keys(documented[0], item, f"{path}[{n}]")
        ]
    return []


def parse_output(stdout: str) -> list[Any] | None:
    try:
        return [json.loads(stdout)]
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in stdout.splitlines() if line.strip()]
        except json.JSONDecodeError:
            return None


def is_error(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"error"}


# Running ---------------------------------------------------------------------------------


@dataclass
class Readme:
    stack: Stack
    settings_file: Path
    page: str = ""  # the page whose examples run now
    ids: dict[str, str] = field(default_factory=dict)  # the page's literal -> real id
    vars: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def plain_env(self) -> dict[str, str]:
        return {
            "PATH": PLAIN_PATH,
            "HOME": os.environ.get("HOME", "/root"),
            "ENV_FILE": str(self.settings_file),
        }

    def plain_shell(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script],
            cwd=REPO_ROOT,
            env=self.plain_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def substitute(self, block: Block, code: str) -> str:
        env = self.stack.env
        for default, actual in (
            ("8000", env["API_PORT"]),
            ("3000", env["WEB_PORT"]),
            ("9000", env["MINIO_ENDPOINT"].rsplit(":", 1)[1]),
            ("7233", env["TEMPORAL_ADDRESS"].rsplit(":", 1)[1]),
            ("8233", env["TEMPORAL_UI_PORT"]),
        ):
            code = re.sub(rf"\b(127\.0\.0\.1|localhost):{default}\b", rf"\g<1>:{actual}", code)
        code = re.sub(r"(?<![\w./-])\.env(?![\w.])", str(self.settings_file), code)
        code = re.sub(r"\bmake up\b", "make -o setup up", code)

        def real_id(match: re.Match[str]) -> str:
            literal = match[0]
            if literal not in self.ids:
                raise AssertionError(
                    f"{block.where}: {literal} is not produced by an earlier example"
                )
            return self.ids[literal]

        return PLACEHOLDER.sub(real_id, code)

    def supervisord_up(self) -> bool:
        pidfile = self.stack.data_dir / "supervisord.pid"
        try:
            os.kill(int(pidfile.read_text().strip()), 0)
        except (OSError, ValueError):
            return False
        return True

    def start_running_batch(self, block: Block) -> None:
        batch = batches.submit(
            self.stack,
            items=batches.chat_items(2000, prefix="long", max_tokens=64),
            metadata={"readme": "running batch"},
        )
        for literal in PLACEHOLDER.findall(block.code):
            self.ids[literal] = batch["id"]

    def wait_done(self, code: str) -> None:
        for batch_id in set(re.findall(r"\bbatch_[0-9a-f]{32}\b", code)):
            batches.wait_terminal(self.stack, batch_id, timeout=180)

    def run(self, block: Block) -> None:
        if block.option("needs") == "running-batch":
            self.start_running_batch(block)
        for line in block.all("edit"):
            with self.settings_file.open("a") as env_file:
                env_file.write(line + "\n")
            self.edits.append(line)
        if any(k == "revert" for k, _ in block.options):
            self.revert_edits()
        code = self.substitute(block, block.code)
        if block.option("wait") == "done":
            self.wait_done(code)

        if block.lang in ("python", "py"):
            argv = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", code]
        else:
            argv = ["bash", "-eo", "pipefail", "-c", "\n".join([*self.vars, code])]
        follow = float(block.option("follow", "0"))
        if follow:
            stdout, stderr, returncode = self.follow(argv, follow)
        else:
            result = subprocess.run(
                argv,
                cwd=REPO_ROOT,
                env=self.plain_env(),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            stdout, stderr, returncode = result.stdout, result.stderr, result.returncode
        shown = (
            f"{block.where} ({block.name}):\n$ {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )

        expected_exit = int(block.option("exit", "0"))
        if not follow:
            assert returncode == expected_exit, (
                f"exit {returncode}, expected {expected_exit}\n{shown}"
            )
        else:
            assert stdout.strip() or stderr.strip(), f"no output in {follow}s\n{shown}"
        for pattern in block.all("expect"):
            assert re.search(pattern, stdout + stderr, re.M), f"no match for /{pattern}/\n{shown}"
        self.check_output(block, stdout, shown)
        if block.kind == "vars":
            self.vars.append(code)
        if self.supervisord_up():
            self.stack.wait_healthy(timeout=180)

    def follow(self, argv: list[str], seconds: float) -> tuple[str, str, int]:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=self.plain_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=30)
        return stdout, stderr, process.returncode

    def check_output(self, block: Block, stdout: str, shown: str) -> None:
        actual = parse_output(stdout) if stdout.strip() else None
        if block.documented is None:
            if actual and any(is_error(value) for value in actual):
                raise AssertionError(f"the example answered an error\n{shown}")
            return
        documented = parse_documented(block.documented)
        assert actual, f"expected JSON output like {block.page}'s\n{shown}"
        if not any(is_error(d) for d in documented):
            assert not any(is_error(a) for a in actual), f"the example answered an error\n{shown}"
        problems: list[str] = []
        for n, value in enumerate(actual):
            if all(missing_keys(d, value) for d in documented):
                where = f"line {n + 1}: " if len(actual) > 1 else ""
                problems += [where + p for p in missing_keys(documented[0], value)]
        assert not problems, "documented fields missing:\n  " + "\n  ".join(problems) + f"\n{shown}"
        literal = documented[0].get("id") if isinstance(documented[0], dict) else None
        if isinstance(literal, str) and PLACEHOLDER.fullmatch(literal):
            real = actual[0].get("id") if isinstance(actual[0], dict) else None
            assert isinstance(real, str), f"no id in the output\n{shown}"
            self.ids[literal] = real

    def enter(self, page: str) -> None:
        """A page starts afresh: its own vars and ids, no edits left, the stack running."""
        if page == self.page:
            return
        self.page = page
        self.ids.clear()
        self.vars.clear()
        self.revert_edits()
        if not self.supervisord_up():
            started = self.plain_shell("scripts/start_services.sh")
            assert started.returncode == 0, started.stderr
        self.stack.wait_healthy(timeout=180)

    def revert_edits(self) -> None:
        if not self.edits:
            return
        lines = self.settings_file.read_text().splitlines()
        for edit in self.edits:
            lines.reverse()
            lines.remove(edit)
            lines.reverse()
        self.settings_file.write_text("".join(f"{x}\n" for x in lines))
        self.edits.clear()


@pytest.fixture(scope="module")
def readme(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Readme]:
    base = Path(tmp_path_factory.mktemp("readme"))
    data_dir = base / "data"
    settings_file = base / "stack.env"
    env = stack_environment(data_dir, WORKER_IDLE_EXIT_SECONDS="30")
    # Everything the plain shell needs is in the file: no INSTANCE_VENV (the checkout's
    # .venv is found as a new user's would be), no ENV_FILE (it is the file).
    settings = {k: v for k, v in env.items() if k not in ("ENV_FILE", "INSTANCE_VENV")}
    settings_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    env["ENV_FILE"] = str(settings_file)
    state = Readme(Stack(env=env, data_dir=data_dir), settings_file)
    started = state.plain_shell("scripts/start_services.sh")
    try:
        assert started.returncode == 0, started.stderr
        state.stack.wait_healthy(timeout=180)
        yield state
    finally:
        state.revert_edits()
        stopped = state.plain_shell("scripts/stop_services.sh", timeout=120)
        if state.stack._client is not None:
            state.stack._client.close()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        summary = (
            f"README and linked pages' examples: {len(state.ran)} run, {len(state.skipped)} skipped"
        ) + "".join(f"\n  skipped {name}" for name in state.skipped)
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # shown even when output is captured
                reporter.write_line("\n" + summary)
        assert stopped.returncode == 0, stopped.stderr


@pytest.mark.parametrize(
    "block", [b for b in EXAMPLES if b.kind], ids=lambda b: f"{b.page}:L{b.line}-{b.name}"
)
def test_readme_example(block: Block, readme: Readme) -> None:
    if block.kind == "skip":
        readme.skipped.append(f"{block.name} ({block.where}): {block.reason}")
        pytest.skip(f"{block.where} {block.name}: {block.reason}")
    readme.enter(block.page)
    readme.run(block)
    readme.ran.append(block.name)


def test_batches_are_listed_newest_first(readme: Readme) -> None:
    """What GET /batches documents, over every batch the examples made (open ones too)."""
    if not readme.supervisord_up():
        started = readme.plain_shell("scripts/start_services.sh")
        assert started.returncode == 0, started.stderr
    readme.stack.wait_healthy(timeout=180)
    older = batches.submit(
        readme.stack, items=batches.chat_items(2000, "older", 64), shard_size=2000
    )
    time.sleep(1.1)  # created_at has a resolution of one second
    newer = batches.submit(readme.stack, items=batches.chat_items(1, "newer"))
    batches.wait_terminal(readme.stack, newer["id"], timeout=180)
    # The case that was wrong: an open batch created earlier than a closed one.
    still_open = batches.get(readme.stack, older["id"])["status"] not in batches.TERMINAL
    listed = readme.stack.http.get("/batches", params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    data = listed.json()["data"]
    created = [b["created_at"] for b in data]
    assert created == sorted(created, reverse=True), [(b["id"], b["created_at"]) for b in data]
    assert [b["id"] for b in data[:2]] == [newer["id"], older["id"]]
    print(f"older batch still open while listed: {still_open}")
    top = readme.stack.http.get("/batches", params={"limit": 1}).json()["data"]
    assert [b["id"] for b in top] == [newer["id"]]
    try:
        readme.stack.http.post(f"/batch/{older['id']}/cancel")
    except httpx.HTTPError:
        pass


def test_make_up_applies_an_added_api_key(readme: Readme) -> None:
    """An API_KEY added to .env reaches the API and the dashboard with one `make up`."""
    if not readme.supervisord_up():
        started = readme.plain_shell("scripts/start_services.sh")
        assert started.returncode == 0, started.stderr
    readme.stack.wait_healthy(timeout=180)
    before = readme.stack.program_pid("fastapi")
    key = "readme-test-key-5bd1"
    with readme.settings_file.open("a") as env_file:
        env_file.write(f"API_KEY={key}\n")
    readme.edits.append(f"API_KEY={key}")
    result = readme.plain_shell("make -o setup up")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "settings changed since the stack started (API_KEY)" in output, output
    assert key not in output
    readme.stack.wait_healthy(timeout=180)
    assert readme.stack.program_pid("fastapi") != before
    api, web = readme.stack.api_url, readme.stack.web_url
    bearer = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{api}/batches").status_code == 401
        assert http.get(f"{api}/batches", headers=bearer).status_code == 200
        assert http.get(f"{web}/api/batches").status_code == 401
        dashboard = http.get(f"{web}/api/batches", auth=("any", key))
        assert dashboard.status_code == 200, dashboard.text
    # Unchanged settings: `make up` restarts nothing.
    pid = readme.stack.program_pid("fastapi")
    again = readme.plain_shell("make -o setup up")
    assert again.returncode == 0, again.stderr
    assert "settings changed" not in again.stderr
    assert readme.stack.program_pid("fastapi") == pid
