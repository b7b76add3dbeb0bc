"""Recorded workflow histories and their recorder (see docs/workflow-versioning.md).

`histories/<release>/` holds the histories one release's workflow code recorded; every
folder there is a release whose workflows may still be running, and the replay test replays
them all against the current code.
"""

from __future__ import annotations

from pathlib import Path

HISTORIES = Path(__file__).resolve().parent / "histories"
# The release the code in this tree becomes: `make record-histories` records into its folder.
CURRENT_RELEASE = "round4"
