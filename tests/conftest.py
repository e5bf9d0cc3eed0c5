"""Fixtures shared by the test tiers: simulated kills of a training run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


class _KillAt:
    """Raises KeyboardInterrupt from ``on_step_end`` at ``step``: a kill right after that step's checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: Any) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt(f"simulated kill after step {state.step}")


@pytest.fixture
def kill_training_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Callable[[], None]]:
    """Arm a simulated kill of every ``fit`` call (any app, any import style) after step ``k``; returns a disarm.

    The hook runs after the step's checkpoint is written, as a ``kill -9`` landing between two steps would.
    """
    from medvit.shared.engine import fit as fit_module

    original = fit_module._Trainer.__init__

    def arm(step: int) -> Callable[[], None]:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            self.hooks.append(_KillAt(step))

        monkeypatch.setattr(fit_module._Trainer, "__init__", init)
        return lambda: monkeypatch.setattr(fit_module._Trainer, "__init__", original)

    return arm
