"""The README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert tuple(namespace["probs"].shape) == (32, 256)
    assert tuple(namespace["per_member"].shape) == (4, 32, 256)


def test_readme_first_screen_gives_demo_and_test_commands():
    first_screen = "\n".join(README.read_text().splitlines()[:15])
    assert "make demo" in first_screen and "make test" in first_screen
