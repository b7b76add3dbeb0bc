"""Says how the instance's runtime differs from the pins of requirements.instance.txt.

Run by the deploy's preflight before anything is synced. It compares against the copy of
`requirements.instance.txt` the image recorded in INSTANCE_VENV, else against the installed
versions. Prints one line per difference; prints nothing when they agree. Standard library
only (see `deploy/instance/__init__.py`).

    python - INSTANCE_VENV PIN... < deploy/instance/requirements.py
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from collections.abc import Iterable
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)")


def pins(lines: Iterable[str]) -> dict[str, str]:
    """{normalised name: version} of every `name==version` line."""
    found = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[3]
    return found


def differences(wanted: dict[str, str], have: dict[str, str], source: str) -> list[str]:
    lines = []
    for name in sorted(set(wanted) | set(have)):
        if name in wanted and wanted[name] != have.get(name):
            lines.append(
                f"{name}=={wanted[name]} in requirements.instance.txt, "
                f"{have.get(name, 'nothing')} {source}"
            )
        elif name not in wanted:
            lines.append(f"{name}=={have[name]} {source}, not in requirements.instance.txt")
    return lines


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: requirements.py INSTANCE_VENV [PIN...]", file=sys.stderr)
        return 2
    venv, wanted = Path(argv[0]), pins(argv[1:])
    recorded = venv / "requirements.instance.txt"
    if recorded.is_file():
        have, source = pins(recorded.read_text().splitlines()), "the image was built with"
    else:
        have, source = {}, f"installed in {venv}"
        for name in wanted:
            try:
                have[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
    for line in differences(wanted, have, source):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
