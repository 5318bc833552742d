"""dgmn_ref.compiled: torch.compile of the reference equals the reference (and fast).

Compiling takes minutes per shape on a CPU (TorchInductor generates and builds C++), far
beyond the unit suite's budget, so the equality tests run with ``DGMN_TEST_COMPILE=1``;
the wiring (namespace, bench case) is tested always.
"""

from __future__ import annotations

import os

import pytest
import torch

from dgmn_ref import compiled, fast
from dgmn_ref import functional as D
from dgmn_ref.layer import EXPERIMENTAL_IMPLS, IMPLS, message_ops
from dgmn_ref.tools import bench

COMPILE = pytest.mark.skipif(
    os.environ.get("DGMN_TEST_COMPILE") != "1",
    reason="torch.compile takes minutes per shape on a CPU: set DGMN_TEST_COMPILE=1",
)


def test_compiled_is_an_impl_with_the_reference_signatures():
    assert "compiled" in EXPERIMENTAL_IMPLS and "compiled" not in IMPLS
    assert message_ops("compiled") is compiled
    for name in ("predict_walks", "split_filters_affinities", "normalise_affinity"):
        assert getattr(compiled, name) is getattr(D, name)
    assert "messages_compiled" in bench.CASES and "messages_compiled" not in bench.DEFAULT_CASES
    # the arguments are checked before anything is compiled, with the reference's messages
    with pytest.raises(ValueError, match="h: expected 4 dimensions"):
        compiled.dynamic_message(*[torch.zeros(1)] * 4, 1)
    with pytest.raises(ValueError, match="rate"):
        compiled.neighbourhood_conv(torch.zeros(1, 2, 3, 3), torch.zeros(1, 9, 2, 3, 3), 0, None)


@COMPILE
def test_compiled_dynamic_message_equals_reference_and_fast():
    g = torch.Generator().manual_seed(0)
    b, c, height, width = 1, 8, 5, 6
    inputs = [
        torch.randn(b, c, height, width, generator=g),
        torch.randn(b, 9, 2, height, width, generator=g) * 3,
        torch.randn(b, 9, height, width, generator=g).softmax(1),
        torch.randn(b, 4, 9, height, width, generator=g),
    ]
    results = []
    for ops in (D, compiled, fast):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = ops.dynamic_message(*leaves, 2)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad((out * probe).sum(), leaves)
        results.append([out, *grads])
    for got in results[1:]:
        for a, want in zip(got, results[0], strict=True):
            assert (a - want).abs().max().item() <= 1e-5
