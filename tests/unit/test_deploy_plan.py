"""The deploy's restart planner and manifest (deploy/instance/): no sshd, no supervisord."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.instance import manifest
from deploy.instance.plan import Plan, plan_actions, programs_for_path
from deploy.instance.requirements import differences, pins

EVERY_PYTHON_PROGRAM = {"fastapi", "web", "worker-cpu", "worker-gpu", "autostop"}
SERVERS = {"temporal", "minio", "llama"}


@pytest.mark.parametrize(
    ("path", "restarted"),
    [
        # the shared kernel: every Python program imports it
        ("kernel/config.py", EVERY_PYTHON_PROGRAM),
        ("kernel/storage.py", EVERY_PYTHON_PROGRAM),
        ("kernel/lifecycle.py", EVERY_PYTHON_PROGRAM),
        ("kernel/", EVERY_PYTHON_PROGRAM),  # a deleted folder, as rsync names it
        # the dashboard only
        ("app/web/server.py", {"web"}),
        ("app/web/static/app.js", {"web"}),
        # the API; app/core and the package itself are imported by the dashboard too
        ("app/api/routes/batches.py", {"fastapi"}),
        ("app/services/batches.py", {"fastapi"}),
        ("app/main.py", {"fastapi"}),
        ("app/core/errors.py", {"fastapi", "web"}),
        ("app/__init__.py", {"fastapi", "web"}),
        # the two workers
        ("workers/activities/batch_io.py", {"worker-cpu", "worker-gpu"}),
        ("workers/__main__.py", {"worker-cpu", "worker-gpu"}),
        # the servers' launcher
        ("scripts/run_program.sh", SERVERS),
        ("scripts/lib/common.sh", SERVERS),
        # settings and supervisord's configuration
        (".env", {"@all"}),
        ("supervisord.conf", {"@update"}),
        # nothing runs these
        ("README.md", set()),
        ("docs/images.md", set()),
        ("tests/unit/test_config.py", set()),
        ("deploy/instance/converge.py", set()),
        ("scripts/start_services.sh", set()),
        ("kernelish/x.py", set()),
        ("application/x.py", set()),
        (".env.example", set()),
    ],
)
def test_programs_for_path(path: str, restarted: set[str]) -> None:
    assert set(programs_for_path(path)) == restarted


def test_plan_starts_the_stack_when_supervisord_is_not_running() -> None:
    assert plan_actions(False, [".env", "kernel/config.py"]) == Plan("start")
    assert plan_actions(False, []).text == "start the stack (scripts/start_services.sh)"


def test_plan_restarts_everything_when_env_changed() -> None:
    steps = plan_actions(True, ["app/main.py", ".env"])
    assert steps.mode == "restart-all"
    assert "restart the stack, .env changed" in steps.text


def test_plan_merges_the_programs_of_every_path_in_a_fixed_order() -> None:
    steps = plan_actions(True, ["workers/llama.py", "app/web/server.py", "supervisord.conf"])
    assert steps == Plan("converge", update=True, restart=("web", "worker-cpu", "worker-gpu"))
    assert steps.text == (
        "apply supervisord.conf (supervisorctl update); restart web worker-cpu worker-gpu "
        "where running; start autostart programs that are down"
    )


def test_plan_without_changes_only_starts_what_is_down() -> None:
    steps = plan_actions(True, ["README.md"])
    assert steps == Plan("converge")
    assert steps.text == "start autostart programs that are down"


def test_manifest_names_what_changed_since_it_was_saved(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("a")
    (root / "app" / "__pycache__").mkdir()
    (root / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"x")
    (root / "README.md").write_text("not watched")
    saved = tmp_path / "manifest.json"
    assert manifest.load(saved) is None  # first deploy: unknown

    manifest.save(saved, manifest.fingerprints(root))
    assert manifest.changed(manifest.load(saved), manifest.fingerprints(root)) == []

    (root / "app" / "main.py").write_text("b")
    (root / ".env").write_text("API_PORT=1")
    (root / "README.md").write_text("changed, not watched")
    assert manifest.changed(manifest.load(saved), manifest.fingerprints(root)) == [
        ".env",
        "app/main.py",
    ]


def test_requirement_differences() -> None:
    wanted = pins(["httpx==0.28.1", "# comment", "Pydantic_Settings==2.7.0 ; python_version>'3'"])
    assert wanted == {"httpx": "0.28.1", "pydantic-settings": "2.7.0"}
    assert differences(wanted, dict(wanted), "installed") == []
    assert differences(wanted, {"httpx": "0.27.0", "extra": "1"}, "the image has") == [
        "extra==1 the image has, not in requirements.instance.txt",
        "httpx==0.28.1 in requirements.instance.txt, 0.27.0 the image has",
        "pydantic-settings==2.7.0 in requirements.instance.txt, nothing the image has",
    ]
