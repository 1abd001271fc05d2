"""The training progress bar (rich, on stderr; the main process only)."""

from __future__ import annotations

from torch import Tensor

#: Steps between bar updates: each update reads the loss, a host sync.
_UPDATE_EVERY = 10


class TrainingProgress:
    """A context manager showing steps done, loss and best validation NLL.

    Args:
        enabled: False shows nothing (other processes, ``progress=False``).
        total: Steps of the whole run.
        done: Steps already taken (a resumed run).
    """

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self._bar = None
        self._task = None

    def __enter__(self) -> TrainingProgress:
        if self.enabled:
            self._bar = _rich_progress()
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, loss: Tensor, best_val_nll: float, force: bool) -> None:
        """Show ``step`` every few steps, and always when ``force`` (the end of the run)."""
        if self._bar is not None and (step % _UPDATE_EVERY == 0 or force):
            self._bar.update(
                self._task,
                completed=step,
                description=f"loss {loss.item():.4f} best val {best_val_nll:.4f}",
            )


def _rich_progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
