"""The CLI's tables: times from the API are shown to the second, whatever else is shown as is."""

from __future__ import annotations

from rich.console import Console

from manager.cli.common import table, when


def test_api_times_are_shown_to_the_second_in_utc() -> None:
    assert when("2026-12-05T06:32:41.254805Z") == "2026-12-05 06:32:41Z"
    assert when("2026-12-05T06:32:41+00:00") == "2026-12-05 06:32:41Z"
    assert when("2026-12-05T06:32:41") == "2026-12-05 06:32:41Z"
    # not a time, or not UTC: shown as it came
    for value in ("", "never", "2026-12-05", "2026-12-05T08:32:41+02:00"):
        assert when(value) == value


def test_a_table_formats_its_time_columns_only() -> None:
    t = table(
        "t",
        ["when", "reason", "last used"],
        [["2026-12-05T06:32:41.1Z", "2026-12-05T06:32:41.1Z", None]],
    )
    console = Console(width=200, record=True)
    console.print(t)
    text = console.export_text()
    assert "2026-12-05 06:32:41Z" in text  # the time column
    assert "2026-12-05T06:32:41.1Z" in text  # a prose column keeps what it was given


def test_capture_rates_read_as_a_share_of_the_calls() -> None:
    from manager.cli.capture import capture_rate_text

    assert capture_rate_text(0.05) == "capturing 5 % of its calls"
    assert capture_rate_text(0.001) == "capturing 0.1 % of its calls"
    assert capture_rate_text(1 / 3) == "capturing 33.33 % of its calls"
    assert capture_rate_text(1.0) == "capturing every call"
    assert capture_rate_text(0.0) == "not capturing"
