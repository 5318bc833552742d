"""Context modules compared on the embedded tasks: the fair protocol of docs/comparison.md.

One command runs the whole grid and writes ``results/comparison.json`` (one record per run,
written as each run finishes; an interrupted grid resumes where it stopped):

    python scripts/compare_context.py                 # the grid (~budget in docs/comparison.md)
    python scripts/compare_context.py --report        # tables (README, docs) + plots from the JSON
    python scripts/compare_context.py --erf           # results/erf.json: the FCN's receptive field

Each run trains in a child process (its peak RSS is the run's memory), on the task's own
data folder ``data/<task>_<h>x<w>`` (300 train / 60 val / 60 test frames, generated on first
use). Protocol: for each task, every method gets the same lr sweep (``LRS``) at the small
scale with seed 0, the lr with the best *validation* context accuracy is kept, and seeds
0, 1, 2 run with it at both scales; tables report the *test* split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "results" / "comparison.json"
ERF_JSON = REPO / "results" / "erf.json"
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
    "iterations": 200,
    "batch_size": 4,
    "scale_range": None,
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
# item 4 (why DGMN learns slowly): one change at a time against the protocol's DA+DW+DS
ABLATIONS: tuple[dict, ...] = (
    {"rates": [1, 3, 6, 12]},  # half the map's width: uniform samples do not reach the cue
    {"walk_init": "default"},  # the released code's random walk initialisation
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


def data_root(task: str, scale: str) -> Path:
    """``data/<task>_<scale>``, generated (train / val / test) if missing."""
    from dgmn_ref.data.synthetic import make_synthetic_cityscapes

    root = REPO / "data" / f"{task}_{scale}"
    if not root.exists():
        make_synthetic_cityscapes(
            root, N_TRAIN, N_VAL, size=SCALES[scale], n_test=N_TEST, task=task
        )
    return root


def run_key(spec: dict) -> str:
    kw = json.dumps(spec.get("extra", {}), sort_keys=True)
    return (
        f"{spec['task']}|{spec['scale']}|{spec['method']}|{spec['seed']}|{spec['lr']:g}|"
        f"{spec['iterations']}|{kw}"
    )


def git_commit() -> str:
    """HEAD (``-dirty`` with uncommitted changes); ``DGMN_COMMIT`` for a ``git archive`` copy."""
    if os.environ.get("DGMN_COMMIT"):
        return os.environ["DGMN_COMMIT"]

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")


# ------------------------------------------------------------------------- one run


def vehicle_class_accuracy(matrix) -> float | None:
    """Among context pixels predicted as car / truck / bus: the fraction with the right one."""
    sub = matrix[:, list(VEHICLES)]
    predicted = float(sub.sum())
    correct = float(sum(matrix[v, v] for v in VEHICLES))
    return correct / predicted if predicted else None


def _metrics(model, dataset, num_classes: int) -> dict:
    from dgmn_ref.train import evaluate

    m = evaluate(model, dataset, num_classes, batch_size=4)
    matrix = m["context_meter"].matrix
    return {
        "context_accuracy": m["context_accuracy"],
        "context_miou": m["context_miou"],
        "miou": m["miou"],
        "vehicle_class_accuracy": vehicle_class_accuracy(matrix),
        "vehicle_predicted": float(matrix[:, list(VEHICLES)].sum() / matrix.sum()),
    }


def run_one(spec: dict) -> dict:
    """Train one run of the grid and return its record (called in a child process)."""
    import torch

    from dgmn_ref.complexity import count
    from dgmn_ref.train import TrainConfig, build_dataset, build_model, train

    torch.set_num_threads(1)
    scale, task = spec["scale"], spec["task"]
    h, w = SCALES[scale]
    overrides = methods(scale)[spec["method"]]
    extra = dict(spec.get("extra", {}))
    if "rates" in extra:
        overrides = overrides | {"rates": extra.pop("rates")}
    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig.from_dict(
            SETTINGS
            | overrides
            | {
                "crop_size": [h, w],
                "root": str(data_root(task, scale)),
                "seed": spec["seed"],
                "lr": spec["lr"],
                "iterations": spec["iterations"],
                "context_kwargs": extra or None,
                "out": work,
                "progress": False,
                "log_every": math.gcd(20, spec["curve_every"]),
                "checkpoint_every": spec["curve_every"],
            }
        ).check()
        val = build_dataset(cfg, "val")
        probe = build_model(cfg)
        curve, marks = [], []
        eval_seconds = 0.0

        def callback(iteration: int, _: dict) -> None:
            # called at logged iterations (every one in older versions of the loop); the
            # time of the curve's evaluations is taken out of the marks
            nonlocal eval_seconds
            marks.append((iteration, time.perf_counter() - eval_seconds))
            if iteration % cfg.checkpoint_every == 0 and iteration < cfg.iterations:
                tic = time.perf_counter()
                state = torch.load(Path(work) / "checkpoint.pt", map_location="cpu")
                probe.load_state_dict(state["model"])
                m = _metrics(probe, val, cfg.num_classes())
                curve.append([iteration, m["context_accuracy"], m["miou"]])
                eval_seconds += time.perf_counter() - tic

        tic = time.perf_counter()
        result = train(cfg, overwrite=True, callback=callback)
        train_seconds = time.perf_counter() - tic - eval_seconds
        model = result["model"]
        v = _metrics(model, val, cfg.num_classes())
        t = _metrics(model, build_dataset(cfg, "test"), cfg.num_classes())
    curve.append([cfg.iterations, v["context_accuracy"], v["miou"]])
    steps = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
    cost = count(build_model(cfg), (1, 3, h, w))
    kwargs = {k: overrides[k] for k in ("context", "variant", "rates") if k in overrides}
    record = {
        "task": task,
        "scale": scale,
        "method": spec["method"],
        "phase": spec["phase"],
        "layer_kwargs": kwargs | ({"context_kwargs": cfg.context_kwargs} if extra else {}),
        "seed": spec["seed"],
        "lr": spec["lr"],
        "iterations": cfg.iterations,
        "val": v,
        "test": t,
        "curve": curve,
        "macs": cost["macs"],
        "params": cost["params"],
        "s_per_it": steps,
        "train_s": train_seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_avg": os.getloadavg()[0],
        "git_commit": spec["git_commit"],
        "key": run_key(spec),
    }
    if spec["method"] == "Dilated FCN":
        from dgmn_ref.tools.context_check import effective_receptive_field

        record["erf"] = effective_receptive_field(model, val, gap=min_gap(task, scale))
    return record


def min_gap(task: str, scale: str) -> int:
    """Smallest distance (px) between a context pixel and the cue of ``task`` at ``scale``."""
    from dgmn_ref.data.redundant import min_context_distance
    from dgmn_ref.data.synthetic import MIN_CONTEXT_DISTANCE

    w = SCALES[scale][1]
    return min_context_distance(w) if task == "redundant" else int(MIN_CONTEXT_DISTANCE * w)


# ---------------------------------------------------------------------------- grid


def load(path: Path = RESULTS) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save(records: list[dict], path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    tmp.replace(path)


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


def plan(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """The grid in priority order: per task, the sweep, then seed 0 at the large scale, then
    the other seeds (small, then large). Entries with ``lr=None`` use the selected lr."""
    order = []

    def add(phase: str, **spec) -> None:
        order.append((phase, spec))

    for task in args.tasks:
        for lr in LRS:
            for m in args.methods:
                add("sweep", task=task, scale=SMALL, method=m, seed=0, lr=lr)
        for scale in args.scales:
            if scale != SMALL:
                for m in args.methods:
                    add("final", task=task, scale=scale, method=m, seed=0)
        for seed in args.seeds:
            if seed == 0:
                continue
            for m in args.methods:
                add("final", task=task, scale=SMALL, method=m, seed=seed)
        if task == "redundant" and "+ DGMN DA+DW+DS" in args.methods:
            for extra in ABLATIONS:
                add(
                    "ablation",
                    task=task,
                    scale=SMALL,
                    method="+ DGMN DA+DW+DS",
                    seed=0,
                    extra=extra,
                )
        for seed in args.seeds:
            for scale in args.scales:
                if seed == 0 or scale == SMALL:
                    continue
                for m in args.methods:
                    add("final", task=task, scale=scale, method=m, seed=seed)
    return order


def run_grid(args: argparse.Namespace) -> int:
    commit = git_commit()
    records = load(args.json)
    done = {r["key"] for r in records}
    tic = time.perf_counter()
    for phase, spec in plan(args):
        if args.stop_at and time.time() > args.stop_at:
            print("stopping: --stop-at reached", flush=True)
            break
        spec = {"iterations": args.iterations, "curve_every": args.iterations // 5} | spec
        if "lr" not in spec:
            lr = selected_lr(records, spec["task"], spec["method"], args.iterations)
            if lr is None:
                print(f"skip (sweep incomplete): {spec}", flush=True)
                continue
            spec["lr"] = lr
        spec = {"extra": {}} | spec | {"phase": phase, "git_commit": commit}
        key = run_key(spec)
        if key in done:
            continue
        record = _child(spec)
        records = load(args.json) + [record]
        save(records, args.json)
        done.add(key)
        print(
            f"{time.perf_counter() - tic:7.0f}s {key}: test ctx "
            f"{record['test']['context_accuracy']:.3f} ({record['s_per_it']:.3f} s/it)",
            flush=True,
        )
    print(f"grid wall time this invocation: {time.perf_counter() - tic:.0f} s", flush=True)
    return 0


def _child(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--run-one", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    if out.returncode:
        raise RuntimeError(f"run {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report

GENERATED = "<!-- generated by scripts/compare_context.py --report: {name} -->"
END = "<!-- end of generated: {name} -->"
DOCS = REPO / "docs" / "comparison.md"
README = REPO / "README.md"


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
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _rates(r: dict) -> str:
    k = r["layer_kwargs"]
    return "{" + ", ".join(map(str, k["rates"])) + "}" if "rates" in k else ""


def result_table(records: list[dict], task: str, scale: str) -> str:
    lines = [
        "| method | rates | lr | seeds | test context acc. (%) | vehicle-class acc. (%) "
        "| test mIoU (%) | val context acc. (%) | MACs (G) | params (k) | s / it | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        rs = final_runs(records, task, scale, method)
        if not rs:
            lines.append(f"| {method} | | | not run | | | | | | | | |")
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
            f"| {max(r['peak_mb'] for r in rs):.0f} |"
        )
    its = sorted({r["iterations"] for m in METHODS for r in final_runs(records, task, scale, m)})
    lines.append("")
    lines.append(f"({task} task, {scale}, {'/'.join(map(str, its))} iterations; test split.)")
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
    rs = [r for r in records if r["phase"] == "ablation"]
    lines = [
        "| task | scale | method | change | lr | seed | val context acc. (%) "
        "| test context acc. (%) | val acc. along the run (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rs:
        change = json.dumps(r["layer_kwargs"].get("context_kwargs") or {}) + (
            f" rates {_rates(r)}" if "rates" in r["layer_kwargs"] else ""
        )
        curve = " ".join(f"{100 * c[1]:.0f}" for c in r["curve"])
        lines.append(
            f"| {r['task']} | {r['scale']} | {r['method']} | {change} | {r['lr']:g} "
            f"| {r['seed']} | {100 * r['val']['context_accuracy']:.1f} "
            f"| {100 * r['test']['context_accuracy']:.1f} | {curve} |"
        )
    return "\n".join(lines) if rs else "(no ablation runs in results/comparison.json)"


def erf_table(records: list[dict]) -> str:
    lines = [
        "| task | scale | seed | trained FCN: r50 / r90 / r99 (px) | cue gap (px) "
        "| gradient mass beyond the gap |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        if "erf" in r and r["phase"] in ("sweep", "final"):
            e = r["erf"]
            lines.append(
                f"| {r['task']} | {r['scale']} | {r['seed']} (lr {r['lr']:g}) "
                f"| {e['r50']} / {e['r90']} / {e['r99']} | {e['gap_px']} "
                f"| {100 * e['mass_beyond_gap']:.2f}% |"
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


def _replace(path: Path, name: str, body: str) -> None:
    text = path.read_text()
    begin, end = GENERATED.format(name=name), END.format(name=name)
    if begin not in text:
        raise ValueError(f"{path} has no marker {begin!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{body}\n{end}{tail}")


def report(records: list[dict]) -> int:
    """Write the generated sections of docs/comparison.md and README.md, and the plots."""
    if not records:
        raise SystemExit(f"no records in {RESULTS}")
    sections = {}
    for task in TASKS:
        for scale in SCALES:
            sections[f"{task} {scale}"] = result_table(records, task, scale)
        sections[f"{task} sweep"] = sweep_table(records, task)
    sections["ablations"] = ablation_table(records)
    sections["erf"] = erf_table(records)
    for name, body in sections.items():
        _replace(DOCS, name, body)
    _replace(README, "redundant 192x384", sections["redundant 192x384"])
    plot_pareto(records, REPO / "results" / "comparison_pareto.png")
    plot_curves(records, REPO / "results" / "comparison_curves.png")
    print(f"wrote {DOCS}, {README}, results/comparison_pareto.png, results/comparison_curves.png")
    return 0


def plot_tasks(path: Path, n: int = 3) -> None:
    """The figure of data/README.md: frames of both tasks, the context pixels outlined in
    red and, on the redundant task, the far zone (the cue) hatched in yellow."""
    import matplotlib.pyplot as plt
    import numpy as np

    from dgmn_ref.data.redundant import far_zone
    from dgmn_ref.data.synthetic import renderer

    fig, axes = plt.subplots(len(TASKS), n, figsize=(4 * n, 2.3 * len(TASKS)), squeeze=False)
    for i, task in enumerate(TASKS):
        for j in range(n):
            scene = renderer(task)(np.random.default_rng([0, 0, j]), SCALES[SMALL])
            ax = axes[i, j]
            ax.imshow(scene.rgb)
            ax.contour(scene.context, levels=[0.5], colors="red", linewidths=1)
            if task == "redundant":
                left = bool(np.nonzero(scene.context)[1].mean() < scene.rgb.shape[1] / 2)
                ax.contourf(far_zone(scene.context.shape, left), levels=[0.5, 1.5],
                            colors="none", hatches=["//"])  # fmt: skip
            ax.set_title(f"{task}: vehicles are {scene.beacon_class}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


def write_erf() -> int:
    """results/erf.json: the receptive field of the untrained Dilated FCN at each scale."""
    import torch

    from dgmn_ref.tools.context_check import effective_receptive_field
    from dgmn_ref.train import TrainConfig, build_dataset, build_model

    torch.set_num_threads(1)
    out = {}
    for task in TASKS:
        for scale in SCALES:
            h, w = SCALES[scale]
            cfg = TrainConfig.from_dict(
                SETTINGS
                | {
                    "context": "none",
                    "crop_size": [h, w],
                    "root": str(data_root(task, scale)),
                }  # fmt: skip
            )
            torch.manual_seed(0)
            erf = effective_receptive_field(
                build_model(cfg), build_dataset(cfg, "val"), gap=min_gap(task, scale)
            )
            out[f"{task} {scale}"] = erf | {"model": "Dilated FCN at initialisation, seed 0"}
    ERF_JSON.parent.mkdir(parents=True, exist_ok=True)
    ERF_JSON.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--scales", nargs="+", default=list(SCALES), choices=list(SCALES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--iterations", type=int, default=SETTINGS["iterations"])
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--stop-at", type=float, help="unix time after which no run starts")
    p.add_argument("--run-one", help=argparse.SUPPRESS)
    p.add_argument("--report", action="store_true", help="tables and plots from --json")
    p.add_argument("--erf", action="store_true", help="write results/erf.json")
    p.add_argument("--figure", action="store_true", help="write results/tasks.png")
    args = p.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))), flush=True)
        return 0
    if args.report:
        return report(load(args.json))
    if args.erf:
        return write_erf()
    if args.figure:
        plot_tasks(REPO / "results" / "tasks.png")
        return 0
    return run_grid(args)


if __name__ == "__main__":
    raise SystemExit(main())
