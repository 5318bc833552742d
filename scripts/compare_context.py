"""Context modules compared on the embedded tasks: the fair protocol of docs/comparison.md.

One command runs the whole grid and writes ``results/comparison.json`` (one record per run,
written as each run finishes; an interrupted grid resumes where it stopped):

    python scripts/compare_context.py                 # the grid (~budget in docs/comparison.md)
    python scripts/compare_context.py --report        # tables (README, docs) + plots from the JSON
    python scripts/compare_context.py --erf           # results/erf.json: the FCN's receptive field
    python scripts/compare_context.py --walks         # where a trained DGMN's walks go (~2 min)

Each run trains in a child process (its peak RSS is the run's memory), on the task's own
data folder ``data/<task>_<h>x<w>`` (300 train / 60 val / 60 test frames, generated on first
use). Protocol: for each task, every method gets the same lr sweep (``LRS``) at the small
scale with seed 0, the lr with the best *validation* context accuracy is kept, and seeds
0, 1, 2 run with it at both scales; tables report the *test* split.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the order of the runs within each phase: the question's methods first
PRIORITY: tuple[str, ...] = (
    "+ Non-local",
    "+ DGMN DA+DW+DS",
    "Dilated FCN",
    "+ Deformable",
    "+ ASPP",
    "+ DGMN DA+DW",
    "+ DGMN DA",
)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "results" / "comparison.json"
META = REPO / "results" / "comparison_runs.json"  # one entry per invocation of the grid
ERF_JSON = REPO / "results" / "erf.json"
from dgmn_ref.tools.comparison import (  # noqa: E402
    ABLATIONS,
    CONFIG_KEYS,
    LRS,
    METHODS,
    N_TEST,
    N_TRAIN,
    N_VAL,
    SCALES,
    SEEDS,
    SETTINGS,
    SMALL,
    TASKS,
    VEHICLES,
    ablation_table,
    erf_table,
    methods,
    min_gap,
    plot_curves,
    plot_pareto,
    plot_tasks,
    result_table,
    selected_lr,
    sweep_table,
    vehicle_class_accuracy,
)


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
    overrides = overrides | {k: extra.pop(k) for k in CONFIG_KEYS if k in extra}
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
    if "walk_lr_mult" in overrides:
        kwargs["walk_lr_mult"] = overrides["walk_lr_mult"]
    record = {
        "task": task,
        "scale": scale,
        "method": spec["method"],
        "phase": spec["phase"],
        "change": spec.get("extra", {}),
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


# ---------------------------------------------------------------------------- grid


def load(path: Path = RESULTS) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save(records: list[dict] | dict, path: Path = RESULTS) -> None:
    """Write ``records`` as JSON to ``path`` through a temporary file (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    tmp.replace(path)


def plan(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """The grid in priority order: per task, the sweep, seed 0 at the large scale, seeds 1
    and 2 at the small scale, seeds 1 and 2 at the large scale (within each, the methods in
    ``PRIORITY`` order); then the item-4 ablations of every task (every seed, small scale).
    Entries without ``lr`` use the selected lr."""
    order = []

    def add(phase: str, **spec) -> None:
        order.append((phase, spec))

    # the question's methods first (a cut grid still answers it)
    priority = [m for m in PRIORITY if m in args.methods]
    for task in args.tasks:
        for lr in LRS:
            for m in priority:
                add("sweep", task=task, scale=SMALL, method=m, seed=0, lr=lr)
        for scale in args.scales:
            if scale != SMALL:
                for m in priority:
                    add("final", task=task, scale=scale, method=m, seed=0)
        for seed in args.seeds:
            if seed == 0:
                continue
            for m in priority:
                add("final", task=task, scale=SMALL, method=m, seed=seed)
        for seed in args.seeds:
            for scale in args.scales:
                if seed == 0 or scale == SMALL:
                    continue
                for m in priority:
                    add("final", task=task, scale=scale, method=m, seed=seed)
    if "+ DGMN DA+DW+DS" in args.methods and args.ablations and SMALL in args.scales:
        for task in args.tasks:
            for extra in ABLATIONS:
                for seed in args.seeds:
                    add(
                        "ablation",
                        task=task,
                        scale=SMALL,
                        method="+ DGMN DA+DW+DS",
                        seed=seed,
                        extra=extra,
                    )
    return order


def run_grid(args: argparse.Namespace) -> int:
    """Run what is not in ``--json`` yet, ``--jobs`` children at a time. The children only
    compute; this process alone writes the JSON (one record as each run ends). A run whose
    lr comes from a sweep waits until that sweep is complete."""
    commit = git_commit()
    records = load(args.json)
    done = {r["key"] for r in records}
    pending = []
    for phase, spec in plan(args):
        spec = {"iterations": args.iterations, "curve_every": args.iterations // 5} | spec
        spec = {"extra": {}} | spec | {"phase": phase, "git_commit": commit}
        if "lr" in spec and run_key(spec) in done:
            continue
        pending.append(spec)
    start = {"started": time.time(), "load_avg": os.getloadavg()[0], "runs_before": len(records)}
    for task, scale in dict.fromkeys((spec["task"], spec["scale"]) for spec in pending):
        data_root(task, scale)  # made here, once, before children could race to make it
    tic = time.perf_counter()
    running: dict[concurrent.futures.Future, dict] = {}
    stopped = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while pending or running:
            stopped = stopped or bool(args.stop_at and time.time() > args.stop_at)
            while not stopped and len(running) < args.jobs:
                spec = _next_ready(pending, records, done, running)
                if spec is None:
                    break
                running[pool.submit(_child, spec)] = spec
            if not running:
                for spec in pending:
                    print(f"skip (sweep incomplete or stopped): {run_key_or(spec)}", flush=True)
                break
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                spec = running.pop(future)
                record = future.result()
                records = load(args.json) + [record]
                save(records, args.json)
                done.add(record["key"])
                print(
                    f"{time.perf_counter() - tic:7.0f}s {record['key']}: test ctx "
                    f"{record['test']['context_accuracy']:.3f} ({record['s_per_it']:.3f} s/it)",
                    flush=True,
                )
    wall = time.perf_counter() - tic
    if stopped:
        print("stopped: --stop-at reached; a re-run resumes", flush=True)
    print(f"grid wall time this invocation: {wall:.0f} s", flush=True)
    meta = {
        "command": shlex.join(["python", "scripts/compare_context.py", *args.argv]),
        "jobs": args.jobs,
        "wall_s": round(wall, 1),
        "runs_added": len(records) - start["runs_before"],
        "complete": not stopped and not pending,
        "load_avg_start": start["load_avg"],
        "load_avg_end": os.getloadavg()[0],
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start["started"])),
        "git_commit": commit,
    }
    runs = json.loads(args.meta.read_text()) if args.meta.is_file() else []
    save(runs + [meta], args.meta)
    return 0


def run_key_or(spec: dict) -> str:
    return run_key(spec) if "lr" in spec else f"{spec['task']}|{spec['scale']}|{spec['method']}"


def _next_ready(pending: list[dict], records: list[dict], done: set, running: dict):
    """Remove and return the first pending spec that can start now (its lr known and the
    run neither done nor running), or None."""
    busy = {run_key(spec) for spec in running.values()}
    i = 0
    while i < len(pending):
        spec = pending[i]
        if "lr" not in spec:
            lr = selected_lr(records, spec["task"], spec["method"], spec["iterations"])
            if lr is None:  # its sweep is still running (or was cut)
                i += 1
                continue
            spec = spec | {"lr": lr}
        del pending[i]
        if run_key(spec) not in done and run_key(spec) not in busy:
            return spec
    return None


def _child(spec: dict) -> dict:
    """One run in a child process of one thread; its record (the child's last stdout line)."""
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
    at_init = json.loads(ERF_JSON.read_text()) if ERF_JSON.is_file() else None
    sections["erf"] = erf_table(records, at_init)
    sections["budget"] = (
        f"{len(records)} runs in results/comparison.json; their training time (evaluation "
        f"excluded) sums to {sum(r['train_s'] for r in records) / 60:.0f} minutes of wall "
        f"clock at 1-minute load averages of {min(r['load_avg'] for r in records):.1f}-"
        f"{max(r['load_avg'] for r in records):.1f} on the 2 cores."
    )
    for run in load(META):
        sections["budget"] += (
            f"\n\n`{run['command']}` (started {run['started_utc']} UTC at commit "
            f"{run['git_commit'][:7]}, {run['jobs']} runs at a time): {run['runs_added']} runs in "
            f"{run['wall_s'] / 60:.0f} minutes of wall clock, 1-minute load average "
            f"{run['load_avg_start']:.1f} at the start and {run['load_avg_end']:.1f} at the end; "
            + ("the whole grid." if run["complete"] else "stopped before the end of the grid.")
        )
    for name, body in sections.items():
        _replace(DOCS, name, body)
    _replace(README, "redundant 192x384", sections["redundant 192x384"])
    plot_pareto(records, REPO / "results" / "comparison_pareto.png")
    plot_curves(records, REPO / "results" / "comparison_curves.png")
    print(f"wrote {DOCS}, {README}, results/comparison_pareto.png, results/comparison_curves.png")
    return 0


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


WALKS_JSON = REPO / "results" / "explorer_walks_redundant.json"
WALKS_RUN = REPO / "runs" / "comparison_walks"
WALKS_GALLERY = REPO / "docs" / "explorer-redundant"


def write_walks() -> int:
    """Where a trained DGMN's walks go on the redundant task (issue: the walk explorer).

    Trains the protocol's DGMN DA+DW+DS at 96x192, seed 0, at the lr the committed sweep
    chose, into ``runs/comparison_walks`` (kept, so notebook 08 and ``dgmn-ref
    explore-export`` can open it), then writes ``dgmn-ref explore-numbers``' JSON for it to
    ``results/explorer_walks_redundant.json`` and its gallery to ``docs/explorer-redundant-*``.
    """
    import torch

    from dgmn_ref.figures.explore import explore_numbers
    from dgmn_ref.train import TrainConfig, build_dataset, train

    task, scale, method = "redundant", SMALL, "+ DGMN DA+DW+DS"
    lr = selected_lr(load(RESULTS), task, method, SETTINGS["iterations"])
    if lr is None:
        raise SystemExit(f"--walks: no complete lr sweep of {method} on {task} in {RESULTS}")
    h, w = SCALES[scale]
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(
        SETTINGS
        | methods(scale)[method]
        | {
            "crop_size": [h, w],
            "root": str(data_root(task, scale).relative_to(REPO)),
            "seed": 0,
            "lr": lr,
            "out": str(WALKS_RUN.relative_to(REPO)),
            "progress": False,
            "log_every": 100,
            "checkpoint_every": SETTINGS["iterations"],
        }
    ).check()
    tic = time.perf_counter()
    model = train(cfg)["model"]
    train_s = time.perf_counter() - tic
    val = _metrics(model, build_dataset(cfg, "val"), cfg.num_classes())
    result = explore_numbers(cfg.out, frames=N_VAL, gallery=WALKS_GALLERY.relative_to(REPO))
    result["command"] = "python scripts/compare_context.py --walks"
    result["train_s"] = round(train_s, 1)
    result["lr"] = lr
    result["val_context_accuracy"] = round(val["context_accuracy"], 4)
    result["val_miou"] = round(val["miou"], 4)
    save(result, WALKS_JSON)
    print(f"wrote {WALKS_JSON.relative_to(REPO)}")
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
    p.add_argument(
        "--meta", type=Path, default=META, help="where each invocation's wall time is appended"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs at a time, one thread each (default 2: the 2 cores of the budget machine)",
    )
    p.add_argument("--stop-at", type=float, help="unix time after which no run starts")
    p.add_argument(
        "--no-ablations",
        dest="ablations",
        action="store_false",
        help="leave out the item-4 one-change runs",
    )
    p.add_argument("--run-one", help=argparse.SUPPRESS)
    p.add_argument("--report", action="store_true", help="tables and plots from --json")
    p.add_argument("--erf", action="store_true", help="write results/erf.json")
    p.add_argument("--figure", action="store_true", help="write results/tasks.png")
    p.add_argument(
        "--walks",
        action="store_true",
        help="train the protocol's DGMN on redundant 96x192 (seed 0) and write where its walks "
        "go: results/explorer_walks_redundant.json",
    )
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.jobs < 1:
        p.error(f"--jobs: expected an int >= 1, got {args.jobs}")
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
    if args.walks:
        os.chdir(REPO)  # the run folder and the data root are recorded relative to the repository
        return write_walks()
    return run_grid(args)


if __name__ == "__main__":
    raise SystemExit(main())
