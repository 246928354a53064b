"""What the stages show people: tables with readable numbers."""

from __future__ import annotations

import math

from tasks.reporting import display_rows, format_table


def test_floats_are_shown_rounded_and_everything_else_as_is() -> None:
    rows = [{"character": "Alice", "share": 11 / 18, "images": 7, "loss": math.nan, "ok": True}]
    shown = display_rows(rows)
    assert shown == [
        {"character": "Alice", "share": 0.6111, "images": 7, "loss": shown[0]["loss"], "ok": True}
    ]
    assert math.isnan(shown[0]["loss"])
    assert rows[0]["share"] == 11 / 18  # the caller's rows are left alone
    table = format_table(shown)
    assert "0.6111 " in table + " " and "0.6111111" not in table
    assert table.splitlines()[0].split() == ["character", "share", "images", "loss", "ok"]
