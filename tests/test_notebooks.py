"""Every notebook in notebooks/ is committed executed, so that strict nbval has outputs to check.

nbval only *runs* a cell saved without outputs and compares nothing, so a notebook committed
unexecuted would pass ``make test`` silently. These checks catch that (and errors, stale partial
runs and a wrong kernel) without starting a kernel; ``make notebooks`` fixes a failure.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# A cell that calls one of these is expected to leave output behind.
PRINTS = re.compile(r"\bprint\(|\bdisplay\(")
SHOWS = re.compile(r"\bplt\.show\(\)")


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def test_notebooks_exist() -> None:
    """Every notebook is ``NN_name.ipynb``, numbered 00, 01, ... without a gap (00-08 at
    least), and listed in notebooks/README.md."""
    names = [p.name for p in NOTEBOOKS]
    assert len(names) >= 9, f"expected notebooks 00-08 at least, found {names}"
    for number, name in enumerate(names):
        assert re.fullmatch(rf"{number:02d}_\w+\.ipynb", name), (
            f"notebooks/{name}: expected notebook number {number:02d} (NN_name.ipynb, no gaps)"
        )
    readme = (NOTEBOOKS[0].parent / "README.md").read_text()
    for name in names:
        assert f"]({name})" in readme, f"notebooks/README.md does not link {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_valid_with_python3_kernel(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{path.name}: kernelspec name is {kernel!r}, expected 'python3'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executed_top_to_bottom(path: Path) -> None:
    counts = [c.execution_count for c in _code_cells(path)]
    missing = [i for i, n in enumerate(counts) if n is None]
    assert not missing, (
        f"{path.name}: code cells {missing} have no execution_count: the notebook was saved "
        "unexecuted or partly executed; run `make notebooks`"
    )
    assert counts == sorted(counts) and len(set(counts)) == len(counts), (
        f"{path.name}: execution counts {counts} are not increasing: cells were run out of "
        "order; run `make notebooks`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_committed(path: Path) -> None:
    for index, cell in enumerate(_code_cells(path)):
        kinds = [o.output_type for o in cell.outputs]
        assert "error" not in kinds, f"{path.name}, code cell {index}: committed with an error"
        if PRINTS.search(cell.source):
            assert cell.outputs, (
                f"{path.name}, code cell {index} prints but has no committed output; "
                "run `make notebooks`"
            )
        if SHOWS.search(cell.source):
            images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            assert images, (
                f"{path.name}, code cell {index} shows a figure but no image was committed "
                "(is `%matplotlib inline` missing?); run `make notebooks`"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_install_cells(path: Path) -> None:
    for index, cell in enumerate(_code_cells(path)):
        assert not re.search(r"^\s*[!%]\s*pip\b", cell.source, re.MULTILINE), (
            f"{path.name}, code cell {index}: installs packages; dependencies belong in "
            "pyproject.toml"
        )
