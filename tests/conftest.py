"""Fixtures shared by the test files: a small synthetic dataset, one thread, free ports."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from dgmn_ref.data.synthetic import make_synthetic_cityscapes


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """8 train and 2 val frames of the synthetic context task, 48x96, Cityscapes layout."""
    root = tmp_path_factory.mktemp("data") / "synthetic_cityscapes"
    return make_synthetic_cityscapes(root, n_train=8, n_val=2, size=(48, 96), seed=0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """``torch.set_num_threads(1)`` for the test (bit-identical runs, steady on a loaded
    machine), then the caller's thread count again."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a TCP port of 127.0.0.1 that is free now."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick
