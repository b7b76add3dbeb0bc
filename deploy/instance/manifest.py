"""Fingerprints of the deployed files whose change calls for a restart.

A deploy records them in `.deploy/manifest.json` once the instance runs the synced code, so a
deploy interrupted after the sync is finished by the next one. Standard library only (see
`deploy/instance/__init__.py`).

    python -m deploy.instance.manifest MANIFEST           prints the paths changed since
                                                           MANIFEST ("@unknown" without one)
    python -m deploy.instance.manifest MANIFEST --save    records the current fingerprints
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

ROOTS = ("app", "kernel", "workers", "scripts", "supervisord.conf", ".env")
UNKNOWN = "@unknown"


def files(root: Path) -> Iterator[str]:
    """Every file under ROOTS, relative to `root`, without bytecode."""
    for top in ROOTS:
        if (root / top).is_file():
            yield top
        for folder, dirs, names in os.walk(root / top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            relative = Path(folder).relative_to(root)
            for name in sorted(names):
                if not name.endswith((".pyc", ".pyo")):
                    yield (relative / name).as_posix()


def fingerprints(root: Path) -> dict[str, str]:
    return {path: hashlib.sha256((root / path).read_bytes()).hexdigest() for path in files(root)}


def load(manifest: Path) -> dict[str, str] | None:
    """The recorded fingerprints, or None when there are none (or they are unreadable)."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def changed(saved: dict[str, str] | None, current: dict[str, str]) -> list[str] | None:
    """Paths added, removed or modified since `saved`; None when nothing was recorded."""
    if saved is None:
        return None
    return sorted(
        path for path in set(saved) | set(current) if saved.get(path) != current.get(path)
    )


def save(manifest: Path, current: dict[str, str]) -> None:
    manifest.parent.mkdir(parents=True, exist_ok=True)
    temporary = manifest.with_name(manifest.name + ".tmp")
    temporary.write_text(json.dumps(current, indent=0, sort_keys=True))
    os.replace(temporary, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fingerprints of the deployed files.")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--root", type=Path, default=Path("."), help="the deployed repository")
    args = parser.parse_args(argv)
    current = fingerprints(args.root)
    if args.save:
        save(args.manifest, current)
        return 0
    paths = changed(load(args.manifest), current)
    print("\n".join([UNKNOWN] if paths is None else paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
