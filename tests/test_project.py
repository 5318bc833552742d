"""Project set-up: environment.yml and pyproject.toml agree; the CLI answers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {_name(r): r.replace(" ", "") for r in requirements}


def environment_requirements() -> dict[str, str]:
    """The pip section of environment.yml (conda only provides python and pip)."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip_section = lines[[line.strip() for line in lines].index("- pip:") + 1 :]
    items = [line.split("#")[0].strip() for line in pip_section]
    items = [i[2:].strip() for i in items if i.startswith("- ") and not i.startswith("- -e")]
    return {_name(i): i.replace(" ", "") for i in items}


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_torch_is_pinned_to_the_cpu_wheel_on_disk():
    assert pyproject_requirements()["torch"] == "torch==2.13.0"


def test_cli_help_and_complexity_help():
    out = subprocess.run(
        [sys.executable, "-m", "dgmn_ref.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "complexity" in out.stdout and "train" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "dgmn_ref.cli", "frobnicate"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "invalid choice: 'frobnicate'" in out.stderr


def test_readme_layout_names_every_module():
    """The README's layout lists every module of the package (subpackages but data/ file by
    file), so that it cannot fall behind the tree."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    package = ROOT / "dgmn_ref"
    wanted = [p.name for p in package.glob("*.py") if p.name != "__init__.py"]
    wanted += [f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()]
    for folder in ("training", "figures", "tools"):
        wanted += [p.name for p in (package / folder).glob("*.py") if p.name != "__init__.py"]
    missing = sorted(name for name in wanted if name not in layout)
    assert not missing, f"README.md's layout does not list {missing}"
