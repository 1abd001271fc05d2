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


# Import names whose distribution is called otherwise.
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow"}


def _imported_top_level_modules(package: Path) -> set[str]:
    import ast

    found = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_third_party_import_of_the_packages_is_a_declared_dependency():
    import sys

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {
        re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower()
        for d in pyproject["project"]["dependencies"]
    }
    ours = {"rank1", "features", "pipeline", "flows"}
    imported = set().union(*(_imported_top_level_modules(ROOT / name) for name in ours))
    third_party = imported - ours - set(sys.stdlib_module_names) - {"__future__"}
    # e.g. pydantic and httpx: imported by flows, so they must not arrive only via Prefect.
    missing = {DISTRIBUTION_OF.get(name, name).lower() for name in third_party} - declared
    assert not missing, f"imported but not in [project] dependencies: {sorted(missing)}"
