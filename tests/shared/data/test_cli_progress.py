"""``medvit data`` progress: the generators' and validators' ``progress(done, total)`` callbacks on ItemProgress."""

from __future__ import annotations

import logging

import pytest

from medvit.shared.data.cli import _ProgressCallback


def test_callback_follows_each_split_and_logs_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="medvit.shared.engine.progress")
    with _ProgressCallback("validate x", enabled=True) as progress:
        progress(1, 2)  # a validator reports from the first finished case on
        progress(2, 2)
        first = progress.bar
        assert first is not None and first.done == 2
        progress(1, 2)  # the next split, same size: a new bar
        assert progress.bar is not first and progress.bar.done == 1
        progress(3, 3)  # new total: a new bar, caught up in one call
        assert progress.bar.total == 3 and progress.bar.done == 3
    assert progress.bar is None
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == ["validate x: 1/2", "validate x: 2/2", "validate x: 1/2"] + [
        f"validate x: {i}/3" for i in (1, 2, 3)
    ]


def test_disabled_callback_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="medvit.shared.engine.progress")
    with _ProgressCallback("synth ct", enabled=False) as progress:
        for i in range(1, 4):
            progress(i, 3)
    assert caplog.records == []
