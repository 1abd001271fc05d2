"""The project's rules, checked statically: packaging, layering, README truths, wording.

These are not behaviour tests: they read the repository's files (and pin a few third-party
sentences the error lines pass on), so that a behaviour test never fails for a policy reason
and a policy is checked in one place.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGES = ("rank1", "features", "pipeline", "flows")
#: Which of the project's packages each package may import: flows -> pipeline ->
#: (features, rank1), and the two libraries know nothing of each other.
ALLOWED_IMPORTS = {
    "rank1": set(),
    "features": set(),
    "pipeline": {"features", "rank1"},
    "flows": {"pipeline", "features", "rank1"},
}


# --------------------------------------------------------------------------- packaging


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


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
    extras = set(_pyproject()["project"]["optional-dependencies"])
    (line,) = pip_sections[0]
    m = re.fullmatch(r"-e \.\[([a-z,]+)\]", line)
    assert m, line
    assert set(m.group(1).split(",")) == extras


def test_pyproject_pins_torch_below_2_14_and_never_needs_torchvision():
    pyproject = _pyproject()
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
    found = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_third_party_import_of_the_packages_is_a_declared_dependency():
    declared = {
        re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower()
        for d in _pyproject()["project"]["dependencies"]
    }
    imported = set().union(*(_imported_top_level_modules(ROOT / name) for name in PACKAGES))
    third_party = imported - set(PACKAGES) - set(sys.stdlib_module_names) - {"__future__"}
    # e.g. pydantic and httpx: imported by flows, so they must not arrive only via Prefect.
    missing = {DISTRIBUTION_OF.get(name, name).lower() for name in third_party} - declared
    assert not missing, f"imported but not in [project] dependencies: {sorted(missing)}"


def test_every_marker_used_in_the_tests_is_registered():
    registered = {m.split(":")[0] for m in _pyproject()["tool"]["pytest"]["ini_options"]["markers"]}
    used = set()
    for path in (ROOT / "tests").glob("*.py"):
        used |= set(re.findall(r"pytest\.mark\.([a-z_]+)", path.read_text()))
    builtin = {"parametrize", "skipif", "skip", "xfail", "usefixtures", "filterwarnings"}
    assert used - builtin <= registered, used - builtin - registered


def _recipe(makefile: str, target: str) -> str:
    """The recipe lines of one Makefile target, joined."""
    body = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", makefile, flags=re.M)
    assert body, f"no target {target}"
    return body.group(1)


def test_make_test_runs_everything_and_test_fast_only_the_unit_tests():
    makefile = (ROOT / "Makefile").read_text()
    # CI runs `make test`: no marker may leave anything out of it (it only spreads the
    # suite over two xdist workers).
    assert "$(PY) -m pytest -q $(PARALLEL);" in _recipe(makefile, "test")
    assert " -m " not in _recipe(makefile, "test").replace("$(PY) -m pytest", "")
    assert re.search(r"^PARALLEL := -n 2 --dist loadfile$", makefile, flags=re.M)
    assert "$(FAST_TESTS)" in _recipe(makefile, "test-fast")
    assert re.search(r'^FAST_TESTS := -m "not slow and not integration"$', makefile, flags=re.M)


# --------------------------------------------------------------------------- layering


def _imported_modules(path: Path) -> list[str]:
    """Absolute module names a file imports, function-local imports included."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_along_the_layering(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imported_modules(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED_IMPORTS[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            # Another package's private modules and names are its own business.
            if (
                top in PACKAGES
                and top != package
                and any(p.startswith("_") for p in name.split("."))
            ):
                bad.append(f"{path.relative_to(ROOT)} imports private {name}")
    assert not bad, "\n".join(bad)


def test_rank1_imports_without_pipeline_dependencies():
    code = (
        "import sys, rank1, rank1.models; "
        "bad = [m for m in ('pandas', 'polars', 'mlflow', 'prefect') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_command_line_imports_no_heavy_library():
    # `rank1 --help` answers at once: torch, Prefect, MLflow and polars load per command.
    code = (
        "import sys; from flows.cli import app\n"
        "heavy = [m for m in ('torch', 'prefect', 'mlflow', 'polars') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------- README


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


def test_every_make_target_in_the_readme_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", README.read_text()))
    assert named and named <= targets, named - targets


def test_every_test_the_readme_names_exists():
    # The data-safety table cites tests as `tests/x.py::name` and, after one, `::name`.
    cited = re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", README.read_text())
    assert len(cited) > 10
    missing, current = [], None
    for file, name in cited:
        current = file or current
        tree = ast.parse((ROOT / current).read_text())
        if name not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}:
            missing.append(f"{current}::{name}")
    assert not missing, missing


# --------------------------------------------------------------------------- wording


def test_prefects_not_a_flow_sentence_is_what_serve_check_passes_on(tmp_path):
    # `serve --check` quotes Prefect's own reason after its prefix (see
    # tests/test_cli_errors.py); this pins the wording of the Prefect version installed.
    from typer.testing import CliRunner

    from flows.cli import app

    plain = tmp_path / "plain.py"
    plain.write_text("def job():\n    return 1\n")
    path = tmp_path / "deployments.yaml"
    path.write_text(f"deployments:\n  - {{name: plain, flow: '{plain}:job', cron: '0 3 * * *'}}\n")
    result = CliRunner().invoke(app, ["serve", "--check", "--config", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].endswith(
        "Function with name 'job' is not a flow. Make sure that it is decorated with '@flow'."
    )
