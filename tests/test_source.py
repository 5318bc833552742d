"""dgmn_ref.source: a function's listing with its file, line and a one-line docstring."""

from __future__ import annotations

import inspect

import pytest

from dgmn_ref import functional
from dgmn_ref.layer import DGMN
from dgmn_ref.source import show_source, source


def test_listing_names_the_file_and_line_and_keeps_the_code() -> None:
    text = source(functional.update)
    header, *body = text.splitlines()
    _, first = inspect.getsourcelines(functional.update)
    assert header == f"# dgmn_ref/functional.py:{first}  dgmn_ref.functional.update"
    assert body[0].startswith("def update(")
    assert "    return activation(f + alpha * m)" in body  # the code, untouched
    # the docstring is cut to its first line, which names the equation
    doc_lines = [line for line in body if "Eq. (2)" in line]
    assert len(doc_lines) == 1 and doc_lines[0].endswith('[...]"""')
    assert "activation: the non-linearity" not in text
    assert "activation: the non-linearity" in source(functional.update, full_docstring=True)


def test_methods_classes_and_printing(capsys: pytest.CaptureFixture[str]) -> None:
    assert source(DGMN.forward).splitlines()[0].endswith("dgmn_ref.layer.DGMN.forward")
    assert "class DGMN(" in source(DGMN)
    show_source(functional.normalise_affinity)
    printed = capsys.readouterr().out
    assert printed == source(functional.normalise_affinity)
    assert "def normalise_affinity(" in printed


def test_no_python_source_is_an_error() -> None:
    with pytest.raises(TypeError, match="expected a Python function or class"):
        source(len)
