"""`python -m app.core.config` keeps working: the settings live in `kernel.config`."""

from kernel.config import main

if __name__ == "__main__":
    raise SystemExit(main())
