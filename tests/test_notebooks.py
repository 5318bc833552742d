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

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
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


def test_training_notebooks_have_a_papermill_parameters_cell() -> None:
    """05 and 06 take MODE, ROOT, SUBSET, ITERATIONS, DEVICE and PRETRAINED from one cell tagged
    ``parameters`` (papermill inserts its ``-p`` values after it)."""
    for name in ("05_train_cityscapes.ipynb", "06_train_coco.ipynb"):
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged 'parameters', expected 1"
        assigned = set(re.findall(r"^([A-Z_]+) = ", tagged[0].source, re.MULTILINE))
        expected = {"MODE", "ROOT", "SUBSET", "ITERATIONS", "DEVICE", "PRETRAINED"}
        assert assigned == expected, (
            f"{name}: parameters {sorted(assigned)}, expected {sorted(expected)}"
        )


@pytest.mark.slow
def test_papermill_runs_05_in_smoke_mode(tmp_path: Path) -> None:
    """`papermill notebooks/05_train_cityscapes.ipynb OUT -p MODE smoke -p ITERATIONS 2`: the
    injected values reach the run (2 iterations, not the preset's 20) and no cell fails."""
    import papermill

    out = tmp_path / "05_smoke.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / "05_train_cityscapes.ipynb"),
        str(out),
        parameters={"MODE": "smoke", "ITERATIONS": 2, "SUBSET": 8, "DEVICE": "cpu"},
        cwd=str(NOTEBOOK_DIR),
        kernel_name="python3",
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "ITERATIONS = 2" in injected[0].source
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "mode smoke: synthetic, ResNet-18 (width 8)" in text
    assert "2 iterations of batch 4" in text, "the injected ITERATIONS did not reach the config"
    assert "checkpoint: ['checkpoint.pt', 'config.json', 'log.jsonl']" in text


SHOW_SOURCE = re.compile(r"^show_source\(([\w.]+)\)\s*$", re.MULTILINE)
LISTING_HEADER = re.compile(r"^# \S+:\d+  \S+$", re.MULTILINE)  # "# path:line  module.name"


def _package_object(name: str) -> object:
    """``functional.update`` or ``DGMN.forward``, as the notebooks name it after their imports."""
    import importlib

    first, *rest = name.split(".")
    try:
        obj = importlib.import_module(f"dgmn_ref.{first}")
    except ModuleNotFoundError:
        obj = getattr(importlib.import_module("dgmn_ref"), first)
    for part in rest:
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_source_listings_are_the_current_code(path: Path) -> None:
    """A ``show_source(f)`` cell (its output is not compared by nbval, since line numbers move)
    must show f's current code: the listing is the package, not a copy that went stale."""
    from dgmn_ref.source import source

    for index, cell in enumerate(_code_cells(path)):
        names = SHOW_SOURCE.findall(cell.source)
        if not names:
            continue
        printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        expected = "".join(source(_package_object(n)) for n in names)
        assert LISTING_HEADER.sub("", printed) == LISTING_HEADER.sub("", expected), (
            f"{path.name}, code cell {index}: the listing of {names} is not the package's "
            "current source; run `make notebooks`"
        )


@pytest.mark.slow
def test_papermill_medium_mode_without_weights_is_an_error(tmp_path: Path) -> None:
    """Medium (and full) mode with a weights file that is not there stops at the set-up cell with
    an error naming the file, torchvision's file for ResNet-101 and its URL; it does not train
    from scratch."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(
            str(NOTEBOOK_DIR / "05_train_cityscapes.ipynb"),
            str(tmp_path / "05_medium.ipynb"),
            parameters={
                "MODE": "medium",
                "ROOT": str(tmp_path),
                "PRETRAINED": "weights/absent.pth",
            },
            cwd=str(NOTEBOOK_DIR),
            kernel_name="python3",
            progress_bar=False,
        )
    message = str(error.value)
    assert "FileNotFoundError" in message and "weights/absent.pth" in message
    assert "resnet101-63fe2227.pth, from https://download.pytorch.org/models/" in message
