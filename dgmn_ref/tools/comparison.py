"""The context-module comparison of docs/comparison.md: its protocol and its report.

``scripts/compare_context.py`` runs the grid (one child process per run) and writes
``results/comparison.json``; this module holds what the script and notebook 09 share: the
methods and their rates, the lr selection on the validation split, and the tables and plots
made from the records (paper sec. 4.1's Table 1a rows on the embedded tasks).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

TASKS: tuple[str, ...] = ("redundant", "beacon")
SCALES: dict[str, tuple[int, int]] = {"96x192": (96, 192), "192x384": (192, 384)}
SMALL = "96x192"
LRS: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
SEEDS: tuple[int, ...] = (0, 1, 2)
N_TRAIN, N_VAL, N_TEST = 300, 60, 60
# train ids of the three context classes (car, truck, bus)
VEHICLES: tuple[int, ...] = (13, 14, 15)

# The common schedule (AdamW: with the paper's SGD no model left the prior on the beacon task,
# see the history in docs/comparison.md); full frames, flips, no random scaling.
SETTINGS: dict = {
    "dataset": "synthetic",
    "depth": 18,
    "width": 8,
    "head_channels": 64,
    "dropout": 0.0,
    "optimizer": "adamw",
    "iterations": 400,
    "batch_size": 4,
    "scale_range": None,
    "impl": "fast",  # what the committed runs used (the default was "fast" then)
    "amp": "off",
    "device": "cpu",
    "num_workers": 0,
}

# Sampling rates suited to the map and the task: the cue lies 0.47 W to 1.0 W away from the
# vehicles, so the largest rate is 2/3 of the map's width (16 of 24, 32 of 48 nodes) and the
# outer samples of a vehicle node land in the far zone already before any walk is learned.
# (The paper's {1, 6, 12, 24, 36} are for 97x97 maps; 24 and 36 on a 12x24 map put every
# neighbour but the centre outside the map.) Half-width rates are an item-4 ablation.
RATES: dict[str, list[int]] = {"96x192": [1, 4, 8, 16], "192x384": [1, 8, 16, 32]}
ASPP_RATES: dict[str, list[int]] = {"96x192": [4, 8, 16], "192x384": [8, 16, 32]}
# item 4 (why DGMN learns slowly): one change at a time against the protocol's DA+DW+DS, at
# the small scale, the selected lr, every seed. "rates" and "walk_lr_mult" replace a
# TrainConfig setting; every other key is a DGMN keyword argument (TrainConfig.context_kwargs).
ABLATIONS: tuple[dict, ...] = (
    {"rates": [1, 3, 6, 12]},  # half the map's width: uniform samples do not reach the cue
    {"walk_init": "default"},  # the released code's random walk initialisation
    {"walk_lr_mult": 0.1},  # deformable convolution's practice for its offsets
    {"walk_lr_mult": 10.0},  # the opposite: walks that move faster
    {"steps": 2},  # T = 2 iterations of message passing (sec. 3.1; the paper uses T = 1)
    {"fusion": "residual"},  # the released code's fusion, F + sum_q gamma_q M_q
    # the released code's form of the layer (variants.RELEASED_VARIANTS, at the map's rates)
    {
        "filter_norm": "none",
        "affinity_norm": "softmax",
        "fusion": "residual",
        "bias": False,
        "walk_init": "default",
    },
)
# the keys of an ablation that are TrainConfig settings rather than layer arguments
CONFIG_KEYS: tuple[str, ...] = ("rates", "walk_lr_mult")


def change_name(change: dict) -> str:
    """An ablation's change in words, e.g. ``walk_lr_mult=0.1``."""
    if not change:
        return "none (the protocol's DA+DW+DS)"
    return ", ".join(
        f"{k}={'{' + ', '.join(map(str, v)) + '}' if isinstance(v, list) else v}"
        for k, v in change.items()
    )


def methods(scale: str) -> dict[str, dict]:
    """Method name -> TrainConfig overrides at ``scale``."""
    return {
        "Dilated FCN": {"context": "none"},
        "+ Non-local": {"context": "nonlocal"},
        "+ DGMN DA": {"context": "dgmn", "variant": "da"},
        "+ DGMN DA+DW": {"context": "dgmn", "variant": "da_dw"},
        "+ DGMN DA+DW+DS": {"context": "dgmn", "variant": "da_dw_ds", "rates": RATES[scale]},
        "+ Deformable": {"context": "deformable", "rates": RATES[scale]},
        "+ ASPP": {"context": "aspp", "rates": ASPP_RATES[scale]},
    }


METHODS: tuple[str, ...] = tuple(methods(SMALL))


def vehicle_class_accuracy(matrix) -> float | None:
    """Among context pixels predicted as car / truck / bus: the fraction with the right one."""
    sub = matrix[:, list(VEHICLES)]
    predicted = float(sub.sum())
    correct = float(sum(matrix[v, v] for v in VEHICLES))
    return correct / predicted if predicted else None


def min_gap(task: str, scale: str) -> int:
    """Smallest distance (px) between a context pixel and the cue of ``task`` at ``scale``."""
    from dgmn_ref.data.redundant import min_context_distance
    from dgmn_ref.data.synthetic import MIN_CONTEXT_DISTANCE

    w = SCALES[scale][1]
    return min_context_distance(w) if task == "redundant" else int(MIN_CONTEXT_DISTANCE * w)


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def selected_lr(records: list[dict], task: str, method: str, iterations: int) -> float | None:
    """The sweep's lr with the best val context accuracy (ties: val mIoU); None if the sweep
    of ``(task, method)`` is not complete."""
    sweep = [
        r
        for r in records
        if r["task"] == task
        and r["method"] == method
        and r["scale"] == SMALL
        and r["seed"] == 0
        and r["iterations"] == iterations
        and r["phase"] in ("sweep", "final")
        and not r["layer_kwargs"].get("context_kwargs")
    ]
    if {r["lr"] for r in sweep} < set(LRS):
        return None
    best = max(
        (r for r in sweep if r["lr"] in LRS),
        key=lambda r: (r["val"]["context_accuracy"], r["val"]["miou"]),
    )
    return best["lr"]


def final_runs(records: list[dict], task: str, scale: str, method: str) -> list[dict]:
    """The runs of the protocol: the selected lr, every seed, no ablation options."""
    its = {r["iterations"] for r in records if r["phase"] in ("sweep", "final")}
    out = []
    for iterations in sorted(its):
        lr = selected_lr(records, task, method, iterations)
        out += [
            r
            for r in records
            if (r["task"], r["scale"], r["method"]) == (task, scale, method)
            and r["lr"] == lr
            and r["iterations"] == iterations
            and r["phase"] in ("sweep", "final")
            and not r["layer_kwargs"].get("context_kwargs")
        ]
    return sorted(out, key=lambda r: r["seed"])


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    mean = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _rates(r: dict) -> str:
    k = r["layer_kwargs"]
    return "{" + ", ".join(map(str, k["rates"])) + "}" if "rates" in k else ""


def result_table(records: list[dict], task: str, scale: str) -> str:
    lines = [
        "| method | rates | lr | seeds | test context acc. (%) | vehicle-class acc. (%) "
        "| test mIoU (%) | val context acc. (%) | MACs (G) | params (k) | s / it | peak MB "
        "| load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        rs = final_runs(records, task, scale, method)
        if not rs:
            lines.append(f"| {method} | | | not run | | | | | | | | | |")
            continue
        lines.append(
            f"| {method} | {_rates(rs[0])} | {rs[0]['lr']:g} "
            f"| {','.join(str(r['seed']) for r in rs)} "
            f"| {_pm([r['test']['context_accuracy'] for r in rs])} "
            f"| {_pm([r['test']['vehicle_class_accuracy'] for r in rs])} "
            f"| {_pm([r['test']['miou'] for r in rs])} "
            f"| {_pm([r['val']['context_accuracy'] for r in rs])} "
            f"| {rs[0]['macs'] / 1e9:.3f} | {rs[0]['params'] / 1e3:.0f} "
            f"| {statistics.median(r['s_per_it'] for r in rs):.3f} "
            f"| {max(r['peak_mb'] for r in rs):.0f} "
            f"| {statistics.median(r['load_avg'] for r in rs):.1f} |"
        )
    its = sorted({r["iterations"] for m in METHODS for r in final_runs(records, task, scale, m)})
    lines.append("")
    lines.append(
        f"({task} task, {scale}, {'/'.join(map(str, its)) or 'no'} iterations; test split; "
        "mean ± std over the seeds listed; s / it measured inside the run on one thread of a "
        "shared machine whose 1-minute load average at the run's end is the last column.)"
    )
    return "\n".join(lines)


def sweep_table(records: list[dict], task: str) -> str:
    lines = [
        "| method | " + " | ".join(f"val ctx. acc. lr {lr:g}" for lr in LRS) + " | selected |",
        "|---|" + "---|" * (len(LRS) + 1),
    ]
    for method in METHODS:
        cells = []
        for lr in LRS:
            rs = [
                r
                for r in records
                if (r["task"], r["scale"], r["method"], r["seed"]) == (task, SMALL, method, 0)
                and r["lr"] == lr
                and r["phase"] in ("sweep", "final")
                and not r["layer_kwargs"].get("context_kwargs")
            ]
            cells.append(f"{100 * rs[0]['val']['context_accuracy']:.1f}" if rs else "not run")
        its = sorted({r["iterations"] for r in records if r["phase"] == "sweep"})
        lr = selected_lr(records, task, method, its[-1]) if its else None
        lines.append(
            f"| {method} | " + " | ".join(cells) + f" | {lr:g} |"
            if lr
            else f"| {method} | " + " | ".join(cells) + " | (incomplete) |"
        )
    return "\n".join(lines)


def ablation_table(records: list[dict]) -> str:
    """Item 4: each one-change run set beside the protocol's DA+DW+DS (same scale, lr, seeds)."""
    lines = [
        "| task | change | lr | seeds | test context acc. (%) | vehicle-class acc. (%) "
        "| val acc. along the run, mean (%) | s / it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        rows = {"{}": final_runs(records, task, SMALL, "+ DGMN DA+DW+DS")}
        for r in records:
            if r["task"] == task and r["phase"] == "ablation":
                rows.setdefault(json.dumps(r.get("change", {})), []).append(r)
        if len(rows) == 1:  # no one-change run of this task
            continue
        for change, rs in rows.items():
            if not rs:
                continue
            rs = sorted(rs, key=lambda r: r["seed"])
            n = min(len(r["curve"]) for r in rs)
            curve = " ".join(
                f"{100 * statistics.mean(r['curve'][i][1] for r in rs):.0f}" for i in range(n)
            )
            lines.append(
                f"| {task} | {change_name(json.loads(change))} | {rs[0]['lr']:g} "
                f"| {','.join(str(r['seed']) for r in rs)} "
                f"| {_pm([r['test']['context_accuracy'] for r in rs])} "
                f"| {_pm([r['test']['vehicle_class_accuracy'] for r in rs])} "
                f"| {curve} | {statistics.median(r['s_per_it'] for r in rs):.3f} |"
            )
    if len(lines) == 2:
        return "(no ablation runs in results/comparison.json)"
    return "\n".join(lines) + (
        f"\n\n({SMALL}, DGMN DA+DW+DS at the protocol's selected lr; test split, mean ± std "
        "over the seeds listed; the first row of a task is the protocol's run itself.)"
    )


def erf_table(records: list[dict], at_init: dict | None = None) -> str:
    """The Dilated FCN's effective receptive field beside the cue's distance: untrained
    (``at_init``, results/erf.json) and after training (the FCN records)."""
    lines = [
        "| task | scale | Dilated FCN | r50 / r90 / r95 / r99 (px) | cue gap (px) "
        "| gradient mass beyond the gap | test context acc. (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in (at_init or {}).items():
        task, scale = name.split()
        lines.append(
            f"| {task} | {scale} | untrained | {e['r50']} / {e['r90']} / {e['r95']} / "
            f"{e['r99']} | {e['gap_px']} | {100 * e['mass_beyond_gap']:.2f}% | |"
        )
    for r in records:
        if "erf" in r and r["phase"] in ("sweep", "final"):
            e = r["erf"]
            lines.append(
                f"| {r['task']} | {r['scale']} | trained, seed {r['seed']}, lr {r['lr']:g} "
                f"| {e['r50']} / {e['r90']} / {e['r95']} / {e['r99']} | {e['gap_px']} "
                f"| {100 * e['mass_beyond_gap']:.2f}% "
                f"| {100 * r['test']['context_accuracy']:.1f} |"
            )
    return "\n".join(lines)


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (lower cost x, higher accuracy y), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(records: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in records)]
    costs = (("macs", "MACs (G)", 1e-9), ("s_per_it", "s / training iteration", 1.0),
             ("peak_mb", "peak MB", 1.0))  # fmt: skip
    fig, axes = plt.subplots(
        len(tasks) * len(SCALES), 3, figsize=(13, 3.2 * len(tasks) * len(SCALES)), squeeze=False
    )
    row = 0
    for task in tasks:
        for scale in SCALES:
            runs = {m: final_runs(records, task, scale, m) for m in METHODS}
            runs = {m: rs for m, rs in runs.items() if rs}
            for col, (field, label, unit) in enumerate(costs):
                ax = axes[row, col]
                pts = [
                    (
                        statistics.median(r[field] for r in rs) * unit,
                        statistics.mean(r["test"]["context_accuracy"] for r in rs),
                    )
                    for rs in runs.values()
                ]
                for (x, y), m in zip(pts, runs, strict=True):
                    ax.scatter(x, 100 * y)
                    ax.annotate(m.replace("+ ", ""), (x, 100 * y), fontsize=7)
                front = pareto(pts)
                ax.plot([pts[i][0] for i in front], [100 * pts[i][1] for i in front], "k--", lw=1)
                ax.set_xlabel(label)
                ax.set_ylabel("test context acc. (%)")
                ax.set_title(f"{task} {scale}", fontsize=9)
            row += 1
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_curves(records: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in records)]
    fig, axes = plt.subplots(len(tasks), len(SCALES), figsize=(11, 3.4 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j, scale in enumerate(SCALES):
            ax = axes[i, j]
            for method in METHODS:
                rs = final_runs(records, task, scale, method)
                if not rs:
                    continue
                its = [c[0] for c in rs[0]["curve"]]
                acc = [statistics.mean(r["curve"][k][1] for r in rs) * 100 for k in range(len(its))]
                ax.plot(its, acc, marker="o", ms=3, label=method)
            ax.axhline(100 / 3, color="grey", ls=":", lw=1)
            ax.set_title(f"{task} {scale}: val context acc. (mean over seeds)", fontsize=9)
            ax.set_xlabel("iteration")
            ax.set_ylim(0, 100)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_tasks(path: Path, n: int = 3) -> None:
    """The figure of data/README.md: frames of both tasks, the context pixels outlined in
    red and, on the redundant task, the far zone (the cue) hatched in yellow."""
    import matplotlib.pyplot as plt
    import numpy as np

    from dgmn_ref.data.redundant import far_zone_of
    from dgmn_ref.data.synthetic import renderer

    fig, axes = plt.subplots(len(TASKS), n, figsize=(4 * n, 2.3 * len(TASKS)), squeeze=False)
    for i, task in enumerate(TASKS):
        for j in range(n):
            scene = renderer(task)(np.random.default_rng([0, 0, j]), SCALES[SMALL])
            ax = axes[i, j]
            ax.imshow(scene.rgb)
            ax.contour(scene.context, levels=[0.5], colors="red", linewidths=1)
            if task == "redundant":
                ax.contourf(far_zone_of(scene.context), levels=[0.5, 1.5],
                            colors="none", hatches=["//"])  # fmt: skip
            ax.set_title(f"{task}: vehicles are {scene.beacon_class}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


def far_sampling_share(model, image, context, far) -> dict[str, float]:
    """Where a trained context module reads from, for the vehicle (context) nodes.

    Args:
        model: a :class:`~dgmn_ref.models.SegmentationModel` with ``context`` ``dgmn`` or
            ``nonlocal``.
        image: ``b 3 H W`` normalised frames; context, far: ``b H W`` bool, the vehicle pixels
            and the cue's far zone.

    Returns:
        ``far_share``: for nodes whose centre pixel is a vehicle pixel, the share of the
        module's weights on nodes in the far zone: Non-local's attention (its rows sum to 1),
        or DGMN's affinities on the K sampled positions (eq. 7, rounded to the nearest node),
        averaged over the rates; a uniform spread over the whole map gives about the far
        zone's share of the nodes. For DGMN also ``walk_length``: the mean |walk| in nodes.
    """
    import torch
    from einops import rearrange, reduce

    from dgmn_ref.functional import uniform_positions

    with torch.no_grad():
        was_training = model.training
        model.eval()
        f = model.reduce(model.backbone(image))
        model.train(was_training)
    b, _, h, w = f.shape
    stride = image.shape[-1] // w
    centre = (torch.arange(h) * stride + stride // 2, torch.arange(w) * stride + stride // 2)
    vehicle = context[:, centre[0]][:, :, centre[1]]  # b h w
    far_nodes = far[:, centre[0]][:, :, centre[1]]
    out: dict[str, float] = {"far_nodes": float(far_nodes.float().mean())}
    if model.context_name == "nonlocal":
        with torch.no_grad():
            attention = model.context.block.affinity(f)  # b n m
        on_far = (attention * rearrange(far_nodes, "b h w -> b 1 (h w)")).sum(-1)
        out["far_share"] = float(on_far[rearrange(vehicle, "b h w -> b (h w)")].mean())
        return out
    with torch.no_grad():
        _, states = model.context.forward_with_states(f)
    shares, lengths = [], []
    for state in states:
        positions = uniform_positions(h, w, state.rate) + state.walks  # b k p h w
        rows = positions[:, :, 0].round().long()
        cols = positions[:, :, 1].round().long()
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        batch = torch.arange(b).view(b, 1, 1, 1).expand_as(rows)
        hit = far_nodes[batch, rows.clamp(0, h - 1), cols.clamp(0, w - 1)] & inside
        share = (state.affinity * hit).sum(1)  # b h w
        shares.append(share[vehicle].mean())
        lengths.append(reduce(state.walks.norm(dim=2), "b k h w -> ", "mean"))
    out["far_share"] = float(torch.stack(shares).mean())
    out["walk_length"] = float(torch.stack(lengths).mean())
    return out
