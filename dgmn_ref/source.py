"""The code beside the equation: print a function's source with its file and line.

The notebooks call :func:`show_source` right after an equation, so that the reader sees the
paper's formula and the function that implements it together. The docstring is cut to its
first line (which names the equation); everything else is printed as written.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["show_source", "source"]

_ROOT = Path(__file__).resolve().parents[1]  # the repository root (the package's parent)


def source(obj: Callable[..., Any] | type, full_docstring: bool = False) -> str:
    """``# path:line  module.name`` and then the source of ``obj`` (a function, method or class).

    Args:
        obj: what to show; decorated functions are unwrapped to the code they wrap.
        full_docstring: keep the whole docstring (default: its first line, then ``[...]``).

    Raises:
        TypeError: ``obj`` has no Python source (a builtin or a C extension).
    """
    obj = inspect.unwrap(obj) if callable(obj) and not isinstance(obj, type) else obj
    try:
        lines, first = inspect.getsourcelines(obj)
        path = Path(inspect.getsourcefile(obj) or "").resolve()
    except (OSError, TypeError) as error:
        raise TypeError(f"obj: expected a Python function or class, got {obj!r}") from error
    if not full_docstring:
        lines = _short_docstring(lines)
    shown = path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path
    header = f"# {shown.as_posix()}:{first}  {obj.__module__}.{obj.__qualname__}\n"
    return header + "".join(lines)


def show_source(obj: Callable[..., Any] | type, full_docstring: bool = False) -> None:
    """Print :func:`source` of ``obj``."""
    print(source(obj, full_docstring), end="")


def _short_docstring(lines: list[str]) -> list[str]:
    """``lines`` with a multi-line docstring replaced by its first line and ``[...]``."""
    tree = ast.parse(textwrap.dedent("".join(lines)))
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or not node.body:
        return lines
    doc = node.body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)):
        return lines
    if not isinstance(doc.value.value, str) or doc.end_lineno == doc.lineno:
        return lines
    start, end = doc.lineno - 1, doc.end_lineno or doc.lineno  # 0-based first line, end exclusive
    opening = lines[start].rstrip()
    quote = '"""' if '"""' in opening else "'''"
    return [*lines[:start], f"{opening} [...]{quote}\n", *lines[end:]]
