"""``python -m flows.cli``: the ``rank1`` command line."""

from flows.cli import app

app()
