"""The chaos soak, short: `bench/chaos.py --minutes 3` with fewer lines must hold every
invariant (every batch completed, every custom_id once, no stall past the longest fault plus
the heartbeat timeout, no process growing without bound, no traceback a fault does not
explain). Its report (fault log, tables, samples) is chaos.json in the test's folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from harness.stack import REPO_ROOT

pytestmark = pytest.mark.integration


def load_bench():  # bench/ is scripts, not a package
    spec = importlib.util.spec_from_file_location("bench_chaos", REPO_ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(1200)
def test_a_three_minute_soak_holds_every_invariant(tmp_path: Path) -> None:
    chaos = load_bench()
    # The slack: on a test machine busy with other work, a whole-stack restart alone can take
    # a minute longer than on a quiet one; a wedged batch stalls for good, far past it.
    status = chaos.main(
        [
            *("--minutes", "3", "--seed", "20", "--lines", "600"),
            *("--stall-slack", "90", "--dir", str(tmp_path / "run")),
        ]
    )
    report = json.loads((tmp_path / "run" / "chaos.json").read_text())
    assert report["fault_log"], "at least one fault fired"
    assert status == 0, report["broken"]
