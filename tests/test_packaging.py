"""Static checks of the install files a newcomer uses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_is_thin_and_installs_the_project_with_its_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict)]
    assert any(re.fullmatch(r"python=3\.11(\.\*)?", d) for d in conda)
    assert "pip" in conda
    # Nothing but python and pip from conda: the package set lives in pyproject only.
    assert set(conda) - {"pip"} == {d for d in conda if d.startswith("python")}
    assert len(pip_sections) == 1
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    (line,) = pip_sections[0]
    m = re.fullmatch(r"-e \.\[([a-z,]+)\]", line)
    assert m, line
    assert set(m.group(1).split(",")) == extras


def test_pyproject_pins_torch_below_2_14_and_never_needs_torchvision():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"]
    torch_dep = next(d for d in deps if re.match(r"torch\b", d))
    assert "<2.14" in torch_dep
    everything = deps + [
        d for ds in pyproject["project"]["optional-dependencies"].values() for d in ds
    ]
    assert not any(d.startswith("torchvision") for d in everything)
    assert pyproject["project"]["scripts"]["rank1"] == "flows.cli:app"
    assert pyproject["project"]["requires-python"].startswith(">=3.11")
