"""The fleet's pure parts: how many shards a box wants, and the fleet file."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from deploy import fleet as fleet_module
from kernel.boxes import BoxRecord, shards_for
from kernel.keys import box_key


def fleet_script() -> ModuleType:
    return fleet_module


@pytest.mark.parametrize(
    ("slots", "shard_size", "room", "wanted"),
    [
        (4, 500, 4, 2),  # one shard fills the slots, one more takes over its tail
        (64, 10, 4, 4),  # never more than the worker runs at once
        (64, 10, 0, 8),
        (0, 500, 4, 0),  # llama-server down
    ],
)
def test_shards_a_box_wants(slots: int, shard_size: int, room: int, wanted: int) -> None:
    assert BoxRecord(box="b", slots=slots, shard_room=room).shards_wanted(shard_size) == wanted


def test_stale_boxes_count_for_nothing() -> None:
    boxes = [
        BoxRecord(box="a", slots=4, shard_room=4),
        BoxRecord(box="b", slots=2, shard_room=4),
        BoxRecord(box="gone", slots=8, shard_room=4, live=False),
    ]
    assert shards_for(boxes, 100) == 4
    assert box_key("rack/1") == "boxes/rack_1.json"


def test_fleet_file_names_members_and_their_boxes(tmp_path: Path) -> None:
    fleet = fleet_script()
    (tmp_path / "a.env").write_text("VAST_HOST=10.0.0.1\nVAST_PORT=22\n")
    (tmp_path / "gpu-2.env").write_text("VAST_HOST=10.0.0.2\nVAST_PORT=22\nBOX_NAME='rtx-2'\n")
    path = tmp_path / "fleet.txt"
    path.write_text("# two boxes\nfirst a.env  # a comment\n\ngpu-2.env\n")
    members = fleet.read_fleet(path)
    assert [(m.name, m.box, m.where) for m in members] == [
        ("first", "first", "root@10.0.0.1:22"),
        ("gpu-2", "rtx-2", "root@10.0.0.2:22"),
    ]
    assert members[1].tunnel_environment()["TUNNEL_API_PORT"] == "8101"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a a.env\na b.env\n", "member 'a' is listed twice"),
        ("a missing.env\n", "env file"),
        ("", "no member listed"),
        ("a a.env\nb same.env\n", "deploy to the same place"),
        ("a a.env extra\n", "expected 'NAME ENV_FILE'"),
    ],
)
def test_bad_fleet_files_say_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    fleet = fleet_script()
    (tmp_path / "a.env").write_text("VAST_HOST=h\nVAST_PORT=22\n")
    (tmp_path / "b.env").write_text("VAST_HOST=h2\nVAST_PORT=22\n")
    (tmp_path / "same.env").write_text("VAST_HOST=h\nVAST_PORT=22\n")
    path = tmp_path / "fleet.txt"
    path.write_text(text)
    with pytest.raises(fleet.FleetError, match=message):
        fleet.read_fleet(path)
