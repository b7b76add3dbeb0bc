"""`python -m deploy ARGS` is `./deploy_vast.sh ARGS` (the launcher execs this)."""

import sys

# The launcher may find an older python3: say so rather than fail on 3.11 syntax.
if sys.version_info < (3, 11):  # noqa: UP036
    found = f"{sys.version_info[0]}.{sys.version_info[1]}"
    sys.stderr.write(
        f"[deploy] error: Python 3.11 or newer is required (this is {found}); run make "
        "setup, or set DEPLOY_PYTHON to such an interpreter\n"
    )
    raise SystemExit(1)

try:
    from deploy.cli import main
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the interpreter
    sys.stderr.write(
        f"[deploy] error: {sys.executable} lacks {exc.name} (the deploy reads its settings "
        "with kernel.config: pydantic-settings); run make setup, or set DEPLOY_PYTHON to a "
        "python that has it\n"
    )
    raise SystemExit(1) from None

raise SystemExit(main())
