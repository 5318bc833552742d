"""Measure how closely dgmn_ref's "released" configuration reproduces the authors' layer.

Compares :class:`dgmn_ref.DGMN` built with ``variant_kwargs("released")`` (and
``"released_att4_bug"``) against the transcription of ``ReDynamicWeightsCat33``
(``deform="deformatt"``) in ``tests/test_released.py``, in float64, over several seeds,
both kernels and several rate sets, and counts the parameters of both layers at C = 512.
Writes ``results/released_agreement.json`` (quoted by ``docs/paper-vs-code.md``)::

    python scripts/released_agreement.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

from dgmn_ref import DGMN, released, variant_kwargs
from dgmn_ref.layer import IMPLS

ROOT = Path(__file__).resolve().parents[1]


def load_transcription():
    """``tests/test_released.py``: the transcription lives with the tests that use it."""
    spec = importlib.util.spec_from_file_location("test_released", ROOT / "tests/test_released.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def max_diffs(t, impl: str, rates: tuple, bug: bool, seed: int) -> dict[str, float]:
    """Largest |dgmn_ref - transcription| of each quantity, gradients included."""
    module = t.make_transcription(rates, fixed=not bug, seed=seed)
    layer = t.dgmn_from(module, impl, bug)
    x = t.features(seed + 100)
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, theirs = module(x_theirs)
    out, ours = layer.forward_with_states(x_ours)
    n, c, h, w = x.shape
    diffs = {"walks": 0.0, "filters": 0.0, "affinities": 0.0, "messages": 0.0}
    for q in range(4):
        pairs = {
            "walks": (ours[q].walks, theirs[q]["offset"].reshape(n, 9, 2, h, w)),
            "filters": (ours[q].weights, theirs[q]["filter"].reshape(n, -1, 9, h, w)),
            "affinities": (
                ours[q].affinity,
                theirs[q]["att"].reshape(n, h, w, 9).permute(0, 3, 1, 2),
            ),
            "messages": (ours[q].message, theirs[q]["message"]),
        }
        for name, (a, b) in pairs.items():
            diffs[name] = max(diffs[name], (a - b).abs().max().item())
    diffs["output"] = (out - expected).abs().max().item()
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    (expected * probe).sum().backward()
    (out * probe).sum().backward()
    grads = dict(layer.named_parameters())
    diffs["gradients"] = (x_ours.grad - x_theirs.grad).abs().max().item()
    for name, (target, index) in released.released_names().items():
        ours_grad = grads[target].grad if index is None else grads[target].grad[index : index + 1]
        theirs_grad = dict(module.named_parameters())[name].grad
        diffs["gradients"] = max(diffs["gradients"], (ours_grad - theirs_grad).abs().max().item())
    diffs["output_scale"] = expected.abs().max().item()
    return diffs


def rate4_and_recipe_gaps(t, seed: int) -> dict[str, float]:
    """What the switches change: the bug fix (rate 4) and the previous README recipe."""
    module = t.make_transcription(fixed=False, seed=seed)
    x = t.features(seed + 100)
    expected, theirs = module(x)
    _, ours = t.dgmn_from(module, "reference", bug=False).forward_with_states(x)
    old = dict(variant_kwargs("released"), filter_norm="softmax", affinity_norm="sigmoid")
    old_layer = released.load_state_dict(DGMN(t.C, **old).double(), module.state_dict())
    return {
        "bug_fixed_vs_released_rate4_message": (ours[3].message - theirs[3]["message"])
        .abs()
        .max()
        .item(),
        "bug_fixed_vs_released_rates123_message": max(
            (ours[q].message - theirs[q]["message"]).abs().max().item() for q in range(3)
        ),
        "old_readme_recipe_vs_released_output": (old_layer(x) - expected).abs().max().item(),
    }


def parameter_counts(channels: int = 512) -> dict[str, int]:
    t = load_transcription()
    with torch.device("meta"):
        layers = {
            "released_transcription": t.Transcription(channels, 4, (1, 4, 8, 12), True),
            "dgmn_ref_released": DGMN(channels, **variant_kwargs("released")),
            "dgmn_ref_released_with_biases": DGMN(
                channels, **dict(variant_kwargs("released"), bias=True)
            ),
            "dgmn_ref_paper_default": DGMN(channels),
            "dgmn_ref_paper_coco_full": DGMN(channels, **variant_kwargs("coco_full")),
        }
        return {name: sum(p.numel() for p in m.parameters()) for name, m in layers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "results/released_agreement.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t = load_transcription()
    cases = []
    for impl in IMPLS:
        for rates in [(1, 4, 8, 12), (1, 2, 3, 5), (3, 1, 2, 2)]:
            for bug in (False, True):
                worst: dict[str, float] = {}
                for seed in args.seeds:
                    for key, value in max_diffs(t, impl, rates, bug, seed).items():
                        worst[key] = max(worst.get(key, 0.0), value)
                cases.append(
                    {
                        "impl": impl,
                        "rates": list(rates),
                        "released_att4_bug": bug,
                        "compared_with": "original code" if bug else "code with line 721 fixed",
                        "max_abs_diff": worst,
                    }
                )
                print(impl, rates, bug, f"output {worst['output']:.1e}", flush=True)
    gaps: dict[str, float] = {}
    for seed in args.seeds:
        for key, value in rate4_and_recipe_gaps(t, seed).items():
            gaps[key] = max(gaps.get(key, 0.0), value)
    worst_all = max(
        max(v for k, v in case["max_abs_diff"].items() if k != "output_scale") for case in cases
    )
    result = {
        "command": "python scripts/released_agreement.py",
        "source": "lzrobots/dgmn @ 515476b5c6a07dcc3b7a4d2243c541377624bb33, "
        "ReDynamicWeightsCat33(deform='deformatt'), transcribed in tests/test_released.py",
        "setting": {
            "dtype": "float64",
            "batch": t.N,
            "channels": t.C,
            "groups": t.G,
            "map": [t.H, t.W],
            "seeds": args.seeds,
            "torch": torch.__version__,
        },
        "worst_max_abs_diff": worst_all,
        "cases": cases,
        "what_the_switches_change": gaps,
        "parameters_at_c512": parameter_counts(512),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"worst difference {worst_all:.2e}; wrote {args.out}")


if __name__ == "__main__":
    main()
