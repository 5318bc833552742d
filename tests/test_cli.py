"""The command line starts fast: ``dgmn-ref --help`` imports neither torch nor the layer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import dgmn_ref
from dgmn_ref.cli import COMMANDS

# Times the --help of the command line inside a fresh interpreter (the interpreter's own
# start-up is not counted) and reports which heavy modules it imported.
PROBE = """
import json, sys, time
tic = time.perf_counter()
from dgmn_ref.cli import main
main(["--help"])
elapsed = time.perf_counter() - tic
heavy = sorted(m for m in ("torch", "numpy", "dgmn_ref.layer", "dgmn_ref.data") if m in sys.modules)
print(json.dumps({"seconds": elapsed, "heavy": heavy}), file=sys.stderr)
"""


def test_help_answers_in_under_a_second_without_torch():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage: dgmn-ref" in done.stdout
    for name in COMMANDS:
        assert f"  {name}: " in done.stdout, name
    report = json.loads(done.stderr.strip().splitlines()[-1])
    # the import list is the robust check (a loaded 2-core machine can stretch any time);
    # the bound is 1 s, where importing torch alone takes 2-15 s
    assert report["heavy"] == [], report
    assert report["seconds"] < 1.0, report


def test_package_names_import_on_first_use():
    from dgmn_ref import DGMN, NonLocal2d, variant_kwargs

    assert DGMN.__module__ == "dgmn_ref.layer" and NonLocal2d.__module__ == "dgmn_ref.baselines"
    assert callable(variant_kwargs)
    assert set(dgmn_ref.__all__) <= set(dir(dgmn_ref))
    with pytest.raises(AttributeError, match="no attribute 'Dgmn'"):
        dgmn_ref.Dgmn  # noqa: B018


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    from dgmn_ref.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: dgmn-ref {command}" in capsys.readouterr().out


def test_train_help_shows_defaults_and_help():
    from dgmn_ref.cli import train_parser

    text = " ".join(train_parser().format_help().split())
    assert (
        "--iterations ITERATIONS training iterations (poly schedule length) (default: 40000)"
        in text
    )
    assert "--crop-size N [N ...] random crop H W (one value: square) (default: 769 769)" in text
    assert "(default: auto); one of reference, fast, auto" in text
