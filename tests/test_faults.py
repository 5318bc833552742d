"""Fault injection: the cases of the reliability audit (docs/training.md, "Bad input"),
each with its message, its exit status, and the check that no good file was lost.

Kernels (zero-size maps, mixed dtypes, bad switches), checkpoints (kill -9 mid-write,
zero-byte / text / truncated / bit-flipped files, a full disk, an unwritable folder,
non-finite states), the run lock and stale temporary files, and the data faults.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dgmn_ref import fast, functional
from dgmn_ref.data.check import DataError, check_data, coco_class_names, require_valid_data
from dgmn_ref.data.check import main as check_data_main
from dgmn_ref.data.synthetic import make_synthetic_cityscapes, make_synthetic_coco
from dgmn_ref.layer import DGMN
from dgmn_ref.runlock import LOCK, RunLock, RunLockedError, pid_alive, remove_stale_tmp
from dgmn_ref.training.checkpoint import atomic_save, load_run
from dgmn_ref.training.integrity import (
    CheckpointError,
    nonfinite_tensors,
    state_digest,
    write_error,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, **env) -> subprocess.Popen:
    """A child python running ``code`` with this checkout first on the path."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": REPO, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


# --------------------------------------------------------------------------- kernels


def message_inputs(b, c, height, width, groups=4, h_dtype=torch.float32, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(b, c, height, width, generator=g, dtype=h_dtype),
        torch.randn(b, 9, 2, height, width, generator=g, dtype=dtype),
        torch.randn(b, 9, height, width, generator=g, dtype=dtype).softmax(dim=1),
        torch.randn(b, groups, 9, height, width, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize(
    "shape", [(0, 8, 5, 5), (1, 8, 0, 5), (1, 8, 5, 0), (2, 8, 0, 0), (1, 0, 5, 5)]
)
def test_kernels_agree_on_zero_size_maps(shape):
    inputs = message_inputs(*shape, groups=4 if shape[1] else 1)
    want = functional.dynamic_message(*inputs, rate=2)
    got = fast.dynamic_message(*inputs, rate=2)
    assert got.shape == want.shape == shape and got.dtype == want.dtype == torch.float32
    h, walks = inputs[:2]
    weight = torch.randn(6, shape[1], 3, 3)
    conv = [f.neighbourhood_conv(h, walks, 2, weight) for f in (functional, fast)]
    assert conv[0].shape == conv[1].shape == (shape[0], 6, *shape[2:])
    assert torch.allclose(conv[0], conv[1])


@pytest.mark.parametrize(
    "h_dtype, dtype",
    [
        (torch.float64, torch.float32),  # the audit's case: the reference failed
        (torch.float32, torch.float64),
        (torch.float16, torch.float32),  # the reference returned float32
        (torch.bfloat16, torch.float32),
    ],
)
def test_kernels_agree_on_mixed_dtypes_and_keep_h_dtype(h_dtype, dtype):
    inputs = message_inputs(2, 8, 5, 6, h_dtype=h_dtype, dtype=dtype)
    want = functional.dynamic_message(*inputs, rate=2)
    got = fast.dynamic_message(*inputs, rate=2)
    assert got.dtype == want.dtype == h_dtype
    tol = {torch.float64: 1e-6, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
    assert torch.allclose(got.double(), want.double(), atol=tol[h_dtype], rtol=tol[h_dtype])
    weight = torch.randn(6, 8, 3, 3, dtype=h_dtype)
    conv = [f.neighbourhood_conv(inputs[0], inputs[1], 2, weight) for f in (functional, fast)]
    assert conv[0].dtype == conv[1].dtype == h_dtype
    assert torch.allclose(conv[0].double(), conv[1].double(), atol=4 * tol[h_dtype], rtol=0.05)


@pytest.mark.parametrize("switch", ["dynamic_affinity", "dynamic_weights", "dynamic_sampling"])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_invalid_switch_is_a_value_error_naming_it(switch, value):
    with pytest.raises(ValueError, match=f"{switch}: expected True or False, got {value!r}"):
        DGMN(8, **{switch: value})


# ----------------------------------------------------------------------- checkpoints


def small_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(64, 64, generator=g), "b": torch.zeros(64)},
        "iteration": 3,
        "rng": [{"python": (3, tuple(range(5)), None)}],
    }


def test_checkpoint_records_hash_and_threads_and_round_trips(tmp_path):
    path = atomic_save(small_state(), tmp_path / "checkpoint.pt")
    state = load_run(path, threads=torch.get_num_threads())
    assert state["integrity"]["torch_threads"] == torch.get_num_threads()
    assert state["integrity"]["sha256"] == state_digest(small_state())
    assert torch.equal(state["model"]["w"], small_state()["model"]["w"])
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left


def test_checkpoint_thread_count_mismatch_is_refused(tmp_path):
    path = atomic_save(small_state(), tmp_path / "checkpoint.pt")
    other = torch.get_num_threads() + 1
    with pytest.raises(CheckpointError, match=f"{path}.*{torch.get_num_threads()} torch threads"):
        load_run(path, threads=other)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"", "is empty"),
        (lambda b: b"this is a text file, not a checkpoint\n" * 4, "not a readable torch"),
        (lambda b: b[: len(b) // 2], "not a readable torch"),
        (lambda b: b[:-100], "not a readable torch"),
    ],
    ids=["zero-byte", "text", "truncated-half", "truncated-tail"],
)
def test_damaged_checkpoint_is_a_clear_error_naming_the_file(tmp_path, damage, message):
    path = atomic_save(small_state(), tmp_path / "checkpoint.pt")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as err:
        load_run(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("seed", range(8))
def test_hundred_flipped_bytes_are_detected(tmp_path, seed):
    """The audit flipped 100 bytes of a checkpoint and evaluate scored it anyway."""
    path = atomic_save(small_state(), tmp_path / "checkpoint.pt")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(data), size=100, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        load_run(path)


def test_one_flipped_weight_byte_is_detected(tmp_path):
    state = small_state()
    path = atomic_save(state, tmp_path / "checkpoint.pt")
    data = bytearray(path.read_bytes())
    needle = state["model"]["w"].numpy().tobytes()[:16]
    at = bytes(data).index(needle)  # inside the stored tensor: only the hash can tell
    data[at + 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash does not match"):
        load_run(path)


def test_checkpoint_without_record_loads_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(small_state(), path)
    with pytest.warns(UserWarning, match="no integrity record"):
        assert load_run(path)["iteration"] == 3


def test_failed_save_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    path = atomic_save(small_state(0), tmp_path / "checkpoint.pt")
    good = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr("dgmn_ref.training.integrity.shutil.disk_usage", lambda folder: _Usage(0))
    with pytest.raises(OSError, match="no space left on device writing .*checkpoint.pt") as err:
        atomic_save(small_state(1), path)
    assert "free disk space" in str(err.value) and str(tmp_path) in str(err.value)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["checkpoint.pt"]


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


def test_full_disk_message_from_dev_full():
    """A real ENOSPC: torch's zip writer on /dev/full."""
    with pytest.raises(RuntimeError) as raw:
        torch.save(small_state(), "/dev/full")
    err = write_error(raw.value, "/dev/full", needed=2**40)  # more than any /dev has free
    assert "no space left on device writing /dev/full" in str(err)


def test_unwritable_folder_message_names_the_path(tmp_path):
    err = write_error(PermissionError(13, "Permission denied"), tmp_path / "x.pt")
    assert f"{tmp_path} is not writable" in str(err)
    missing = tmp_path / "no" / "such" / "checkpoint.pt"
    with pytest.raises(OSError, match=f"could not write .*{missing.parent}"):
        atomic_save(small_state(), missing)


def test_nonfinite_tensors_are_named():
    state = small_state()
    assert nonfinite_tensors(state) == []
    state["model"]["w"][0, 0] = float("nan")
    state["model"]["b"][1] = float("inf")
    assert nonfinite_tensors(state) == ["model.b", "model.w"]


# ------------------------------------------------------------- lock and stale files


def test_second_writer_is_refused_naming_pid_and_host(tmp_path):
    with RunLock(tmp_path) as lock:
        holder = lock.holder()
        assert holder["pid"] == os.getpid()
        child = python(
            f"""
            from dgmn_ref.runlock import RunLock
            RunLock({str(tmp_path)!r}).acquire()
            """
        )
        _, err = child.communicate(timeout=60)
        assert child.returncode == 1
        assert f"pid {os.getpid()} on host {holder['host']}" in err
        assert "RunLockedError" in err and LOCK in err
        with pytest.raises(RunLockedError, match="being written by another run"):
            RunLock(tmp_path).acquire()  # also within one process (a second open file)
    assert not (tmp_path / LOCK).exists()  # released and removed


def test_lock_of_a_killed_process_is_stale(tmp_path):
    child = python(
        f"""
        import time
        from dgmn_ref.runlock import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=f"pid {child.pid}"):
        RunLock(tmp_path).acquire()
    child.kill()
    child.wait()
    assert (tmp_path / LOCK).exists() and not pid_alive(child.pid)
    with RunLock(tmp_path) as lock:  # kill -9 left the file; its flock went with the process
        assert lock.previous["pid"] == child.pid
        assert lock.holder()["pid"] == os.getpid()


def test_remove_stale_tmp_keeps_live_writers_and_other_files(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".checkpoint.pt.tmp-{dead_pid}"
    stale_dir = tmp_path / f".synthetic_coco.tmp-{dead_pid}-9f2c1a7b"
    live = tmp_path / f".checkpoint.pt.tmp-{os.getpid()}"
    keep = tmp_path / "checkpoint.pt"
    for p in (stale, live, keep):
        p.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "half.png").write_text("x")
    assert remove_stale_tmp(tmp_path) == sorted([stale, stale_dir])
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, keep.name])


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def city_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("city") / "synthetic_cityscapes"
    return make_synthetic_cityscapes(root, n_train=3, n_val=1, size=(24, 48), seed=0)


@pytest.fixture
def city(city_root, tmp_path):
    import shutil

    return shutil.copytree(city_root, tmp_path / "city")


def frame(root, split="train", i=0):
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    image = images[i]
    label = (
        root / "gtFine" / split / image.parent.name
        / image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    )  # fmt: skip
    return image, label


def test_clean_data_has_no_problems(city):
    assert check_data("synthetic", city) == []
    assert check_data_main(["--dataset", "synthetic", "--root", str(city), "--no-progress"]) == 0


def test_every_cityscapes_fault_is_listed_with_its_path(city, capsys):
    image0, label0 = frame(city, "train", 0)
    image1, label1 = frame(city, "train", 1)
    image2, label2 = frame(city, "train", 2)
    image3, label3 = frame(city, "val", 0)
    image0.write_bytes(image0.read_bytes()[:200])  # truncated PNG
    Image.fromarray(np.asarray(Image.open(label1)).astype(np.uint16) * 300).save(label1)  # 16-bit
    ids = np.asarray(Image.open(label2)).copy()
    ids[0, 0] = 200  # outside the table
    Image.fromarray(ids).save(label2)
    Image.open(image3).crop((0, 0, 10, 10)).save(image3)  # size mismatch
    orphan = label3.with_name("zurich_000099_000019_gtFine_labelIds.png")
    orphan.write_bytes(label3.read_bytes())  # a label without an image

    quick = check_data("synthetic", city, decode=False)
    assert [(p.path, p.error) for p in quick] == [(orphan, True)]
    problems = {(p.path, p.message.split(" ")[0]) for p in check_data("synthetic", city)}
    assert problems == {
        (orphan, "label"),
        (image0, "unreadable"),
        (label1, "label"),
        (label2, "labelIds"),
        (label3, "size"),
    }
    assert check_data_main(["--dataset", "synthetic", "--root", str(city), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert (
        f"{label1}: label image has mode 'I;16'" in out
        or f"{label1}: label image has mode 'I'" in out
    )
    assert f"{label2}: labelIds [200] are not in the Cityscapes table" in out
    assert "5 error(s)" in out
    # the loaders name the file too
    from dgmn_ref.data import CityscapesDataset

    dataset = CityscapesDataset(city, "train")
    for i, name in ((0, image0), (1, label1), (2, label2)):
        with pytest.raises(ValueError, match=str(name)):
            dataset[i]


def test_missing_label_fails_the_cheap_check(city):
    _, label = frame(city, "train", 1)
    label.unlink()
    with pytest.raises(DataError, match=f"no label file \\(expected {label}\\)"):
        require_valid_data("synthetic", city, ["train"])


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco") / "synthetic_coco"
    return make_synthetic_coco(root, n_train=2, n_val=1, size=(24, 48), seed=0)


@pytest.fixture
def coco(coco_root, tmp_path):
    import shutil

    return shutil.copytree(coco_root, tmp_path / "coco")


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_coco_schema_faults_are_listed(coco):
    ann = coco / "annotations" / "instances_train2017.json"
    assert check_data("coco", coco) == []
    edit_json(ann, lambda d: d.pop("categories"))
    (msg,) = [p.message for p in check_data("coco", coco, ["train"], decode=False)]
    assert msg.startswith("missing top-level key 'categories'")
    edit_json(ann, lambda d: d.update(categories=[{"id": 1, "name": "person"}]))
    edit_json(ann, lambda d: [a.pop("area") for a in d["annotations"]])
    problems = check_data("coco", coco, ["train"], decode=False)
    assert any(p.path == ann and "lack 'area'" in p.message for p in problems)
    ann.write_text(ann.read_text()[:-10])
    (problem,) = check_data("coco", coco, ["train"], decode=False)
    assert problem.path == ann and problem.message.startswith("malformed JSON")
    from dgmn_ref.data import CocoSemantic

    with pytest.raises(ValueError, match=f"malformed JSON in COCO annotation file {ann}"):
        CocoSemantic(coco, "train2017")


def test_coco_with_85_categories_uses_its_own_names(coco):
    """The audit's ``Target 85 is out of bounds``: the file's categories, not COCO's 80."""
    extra = [{"id": 100 + i, "name": f"thing{i}", "supercategory": ""} for i in range(5)]
    for split in ("train2017", "val2017"):
        edit_json(coco / "annotations" / f"instances_{split}.json",
                  lambda d: d["categories"].extend(extra))  # fmt: skip
    problems = check_data("coco", coco, decode=False)
    assert problems and not any(p.error for p in problems)
    assert "85 categories differ from COCO 2017's 80" in problems[0].message
    names = coco_class_names(coco, ["train2017", "val2017"])
    assert len(names) == 86 and names[-1] == "thing4"


def test_coco_with_its_own_category_set_names_its_classes(coco):
    """ "car" must not be reported as "bicycle": a file with categories {car} only."""

    def only_cars(d):
        d["categories"] = [{"id": 3, "name": "car", "supercategory": ""}]
        d["annotations"] = [dict(a, category_id=3) for a in d["annotations"]]

    for split in ("train2017", "val2017"):
        edit_json(coco / "annotations" / f"instances_{split}.json", only_cars)
    assert coco_class_names(coco, ["train2017", "val2017"]) == ("background", "car")
    from dgmn_ref.data import CocoSemantic

    dataset = CocoSemantic(coco, "val2017")
    assert dataset.class_names == ("background", "car")
    labels = torch.cat([dataset[i][1].unique() for i in range(len(dataset))]).unique()
    assert set(labels.tolist()) <= {0, 1, 255} and 1 in labels.tolist()


def test_coco_splits_with_different_categories_are_refused(coco):
    edit_json(coco / "annotations" / "instances_val2017.json",
              lambda d: d["categories"].append({"id": 200, "name": "unicorn"}))  # fmt: skip
    with pytest.raises(DataError, match="differ from those of instances_train2017.json"):
        coco_class_names(coco, ["train2017", "val2017"])


def test_coco_image_faults_are_listed(coco):
    images = sorted((coco / "train2017").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:300])  # truncated JPEG
    images[1].unlink()
    problems = check_data("coco", coco, ["train"])
    assert {(p.path, p.message.split(" ")[0]) for p in problems} == {
        (images[0], "unreadable"),
        (images[1], "missing"),
    }


def test_check_data_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        check_data_main(["--dataset", "coco", "--root", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    assert "is not a directory" in capsys.readouterr().err


def test_killed_make_data_tmp_folder_is_removed_by_the_next_run(tmp_path):
    """A killed ``make-data`` left ``.synthetic_cityscapes.tmp-PID-HEX``, never cleaned up."""
    child = python(
        f"""
        import os, signal
        from dgmn_ref.data import synthetic

        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        synthetic.write_cityscapes_frame = killed  # dies inside the temporary folder
        synthetic.make_synthetic_cityscapes({str(tmp_path / "synthetic_cityscapes")!r}, 1, 1)
        """
    )
    assert child.wait(timeout=120) == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".synthetic_cityscapes.tmp-{child.pid}-")
    make_synthetic_cityscapes(tmp_path / "synthetic_cityscapes", 1, 1, size=(24, 48))
    assert os.listdir(tmp_path) == ["synthetic_cityscapes"]


# ---------------------------------------------------- training and evaluation (the CLI)


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "synthetic_cityscapes"
    return make_synthetic_cityscapes(root, n_train=6, n_val=2, size=(48, 96), seed=0)


def tiny_argv(root, out, *extra) -> list[str]:
    """``dgmn-ref train`` flags of a model that runs a step in well under a second."""
    return [
        "--dataset", "synthetic", "--root", str(root), "--out", str(out), "--depth", "18",
        "--width", "4", "--head-channels", "8", "--context", "none", "--iterations", "1",
        "--batch-size", "2", "--crop-size", "32", "48", "--scale-range", "0.75", "1.25",
        "--num-workers", "0", "--checkpoint-every", "1", "--log-every", "1", "--no-progress",
        "--train-subset", "5", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(train_root, tmp_path_factory):
    """A run of one iteration, copied by :func:`run_copy` for each test."""
    from dgmn_ref.cli import train_main

    out = tmp_path_factory.mktemp("trained") / "run"
    assert train_main(tiny_argv(train_root, out)) == 0
    return out


def run_copy(trained, tmp_path):
    import shutil

    return shutil.copytree(trained, tmp_path / "run")


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.mark.parametrize(
    "settings, flags, message",
    [
        ({"freeze_bn": "false"}, [], "freeze_bn: expected bool, got 'false' (str)"),
        ({"seed": "1"}, [], "seed: expected int, got '1' (str)"),
        ({"lr": "0.05"}, [], "lr: expected float, got '0.05' (str)"),
        ({"iteration": 5}, [], "unknown config key 'iteration'; did you mean 'iterations'?"),
        ({"frezze_bn": True}, [], "did you mean 'freeze_bn'?"),
        ({}, ["--scale-range", "0", "0"], "scale_range: expected [lo, hi], finite, 0 < lo <= hi"),
        ({}, ["--train-subset", "-1"], "train_subset: expected an int >= 1"),
        ({}, ["--train-subset", "0"], "train_subset: expected an int >= 1"),
        ({}, ["--log-every", "0"], "log_every: expected an int >= 1, got 0"),
        ({}, ["--lr", "inf"], "lr: expected a finite number > 0, got inf"),  # the audit's NaN run
        ({}, ["--lr", "nan"], "lr: expected a finite number > 0, got nan"),
        ({}, ["--momentum", "1.5"], "momentum: expected a number in [0, 1]"),
        ({}, ["--crop-size", "0", "0"], "crop_size: expected [h, w], ints >= 8"),
        ({}, ["--device", "gpu"], "device: expected auto, cpu, mps, cuda or cuda:N"),
        ({}, ["--pretrained", "/no/weights.pth"], "pretrained: no weights file"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(
    train_root, tmp_path, capsys, settings, flags, message
):
    from dgmn_ref.cli import train_main

    config = tmp_path / "config.json"
    config.write_text(json.dumps(settings))
    out = tmp_path / "run"
    assert train_main(tiny_argv(train_root, out, "--config", str(config), *flags)) == 2
    assert message in capsys.readouterr().err
    assert files(out) == {}  # no config.json: the corrected re-run is not refused


def test_malformed_config_file_is_named(tmp_path, capsys):
    from dgmn_ref.cli import train_main

    config = tmp_path / "bad.json"
    config.write_text('{"lr": 0.01,}')
    assert train_main(["--config", str(config)]) == 2
    assert f"config file {config}: malformed JSON" in capsys.readouterr().err


def test_resume_with_overwrite_is_an_error(train_root, trained, tmp_path, capsys):
    from dgmn_ref.cli import train_main

    out = run_copy(trained, tmp_path)
    before = files(out)
    assert train_main(tiny_argv(train_root, out, "--resume", "--overwrite")) == 2
    assert "--resume and --overwrite contradict each other" in capsys.readouterr().err
    assert files(out) == before


def test_nonfinite_step_never_replaces_the_good_checkpoint(train_root, tmp_path, capsys):
    """The audit's ``--lr inf`` run saved 88 non-finite tensors; a huge finite lr now
    stops at the first check with the last good checkpoint intact (and kept beside)."""
    from dgmn_ref.cli import evaluate_main, train_main

    out = tmp_path / "run"
    argv = tiny_argv(train_root, out, "--iterations", "3", "--lr", "1e30")
    assert train_main([*argv, "--keep-previous"]) == 1
    err = capsys.readouterr().err
    assert "training stopped at iteration 2: NaN or infinity in the loss at iteration 2" in err
    assert f"the last good checkpoint, {out / 'checkpoint.pt'} (iteration 1), is intact" in err
    state = load_run(out)  # verified: hash, and finite
    assert state["iteration"] == 1 and nonfinite_tensors(state["model"]) == []
    assert [json.loads(line)["iteration"] for line in (out / "log.jsonl").open()] == [1]
    assert not (out / "run.lock").exists() and not list(out.glob(".*tmp*"))
    assert evaluate_main([str(out), "--subset", "1"]) == 0  # the good one still evaluates


def test_keep_previous_keeps_the_checkpoint_before_the_newest(train_root, tmp_path):
    from dgmn_ref.cli import train_main

    out = tmp_path / "run"
    assert train_main(tiny_argv(train_root, out, "--iterations", "2", "--keep-previous")) == 0
    assert load_run(out)["iteration"] == 2
    assert load_run(out / "checkpoint_previous.pt")["iteration"] == 1


def test_evaluate_refuses_a_nonfinite_model(train_root, trained, tmp_path, capsys):
    from dgmn_ref.cli import evaluate_main, train_main

    out = run_copy(trained, tmp_path)
    state = load_run(out)
    state["model"]["classifier.weight"][0] = float("nan")
    atomic_save({k: v for k, v in state.items() if k != "integrity"}, out / "checkpoint.pt")
    assert evaluate_main([str(out)]) == 2
    assert (
        "the model holds NaN or infinity in 1 tensors (classifier.weight" in capsys.readouterr().err
    )
    assert not (out / "eval_val.json").exists()
    assert train_main(tiny_argv(train_root, out, "--resume")) == 2
    assert "holds non-finite weights" in capsys.readouterr().err


def test_damaged_checkpoints_are_refused_by_evaluate_and_resume(
    train_root, trained, tmp_path, capsys
):
    """The audit's 100 flipped bytes (mIoU 1.84 instead of 11.73), zero-byte, text files."""
    from dgmn_ref.cli import evaluate_main, train_main

    out = run_copy(trained, tmp_path)
    path = out / "checkpoint.pt"
    good = path.read_bytes()
    flipped = bytearray(good)
    for i in np.random.default_rng(0).choice(len(good), size=100, replace=False):
        flipped[i] ^= 0xFF
    for damaged in (bytes(flipped), b"", b"not a checkpoint\n", good[: len(good) // 3]):
        path.write_bytes(damaged)
        assert evaluate_main([str(out), "--subset", "1"]) == 2
        assert f"checkpoint {path}" in capsys.readouterr().err
        assert train_main(tiny_argv(train_root, out, "--resume")) == 2
        assert f"checkpoint {path}" in capsys.readouterr().err
        assert path.read_bytes() == damaged  # nothing trained on or saved over it


def test_resume_at_another_thread_count_is_refused(train_root, trained, tmp_path, capsys):
    from dgmn_ref.cli import train_main

    out = run_copy(trained, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert train_main(tiny_argv(train_root, out, "--resume")) == 2
    finally:
        torch.set_num_threads(threads)
    assert f"written with {threads} torch threads but this process runs {threads + 1}" in (
        capsys.readouterr().err
    )


def test_second_writer_of_a_run_is_refused(train_root, trained, tmp_path, capsys):
    """The audit's second ``--resume`` beside a running training (136 log lines for 80)."""
    from dgmn_ref.cli import train_main

    out = run_copy(trained, tmp_path)
    before = files(out)
    with RunLock(out):  # a training in progress holds it
        assert train_main(tiny_argv(train_root, out, "--resume")) == 2
        assert f"{out} is being written by another run (pid {os.getpid()}" in (
            capsys.readouterr().err
        )
        assert train_main(tiny_argv(train_root, out, "--overwrite")) == 2
    assert files(out) == before


def test_kill_during_checkpoint_write_then_resume(train_root, tmp_path):
    """kill -9 mid-save: the good checkpoint survives; the next run removes the stale
    temporary file, takes over the dead lock, truncates the log, and ends bit-identical."""
    from dgmn_ref.cli import config_from_args, train_main, train_parser
    from dgmn_ref.training import train

    out, whole = tmp_path / "run", tmp_path / "whole"
    argv = tiny_argv(train_root, out, "--iterations", "3")
    assert train_main(tiny_argv(train_root, whole, "--iterations", "3")) == 0

    def stop(iteration, _):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # checkpoint.pt at iteration 1
        train(config_from_args(train_parser().parse_args(argv)), callback=stop)
    good = (out / "checkpoint.pt").read_bytes()
    child = subprocess.Popen(  # resumes, and is killed saving iteration 2
        [sys.executable, "-m", "dgmn_ref.cli", "train", *argv, "--resume"],
        # the same thread count as this process (a resume at another count is refused)
        env={
            **os.environ,
            "PYTHONPATH": REPO,
            "DGMN_SAVE_DELAY": "120",
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
        },  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    tmp = out / f".checkpoint.pt.tmp-{child.pid}"
    wait_for(lambda: tmp.is_file() or child.poll() is not None, timeout=120)
    child.kill()
    _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err
    assert (out / "checkpoint.pt").read_bytes() == good and load_run(out)["iteration"] == 1
    assert tmp.exists() and json.loads((out / "run.lock").read_text())["pid"] == child.pid
    logged = [json.loads(line)["iteration"] for line in (out / "log.jsonl").open()]
    assert logged == [1, 2]  # the killed run logged iteration 2

    assert train_main([*argv, "--resume"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "log.jsonl"]
    logged = [json.loads(line)["iteration"] for line in (out / "log.jsonl").open()]
    assert logged == [1, 2, 3]  # no duplicate of the replayed iteration 2
    a, b = load_run(out)["model"], load_run(whole)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resume after kill -9 is bit-identical"


def test_bad_data_fails_at_training_start(train_root, tmp_path, capsys):
    import shutil

    from dgmn_ref.cli import train_main

    root = shutil.copytree(train_root, tmp_path / "data")
    _, label = frame(root, "train", 0)
    label.unlink()
    out = tmp_path / "run"
    assert train_main(tiny_argv(root, out)) == 2
    err = capsys.readouterr().err
    assert f"no label file (expected {label})" in err and "dgmn-ref check-data" in err
    assert files(out) == {}


def test_evaluate_names_split_and_subset_and_refuses_bad_input(trained, tmp_path, capsys):
    """The audit's ``--subset 0`` wrote mIoU NaN over eval_val.json; a subset replaced the
    full result; a mistyped synthetic root generated 19 MB of data there."""
    from dgmn_ref.cli import evaluate_main

    out = run_copy(trained, tmp_path)
    assert evaluate_main([str(out)]) == 0
    full = json.loads((out / "eval_val.json").read_text())
    assert full["split"] == "val" and full["subset"] is None and full["images"] == 2
    assert evaluate_main([str(out), "--subset", "1"]) == 0
    subset = json.loads((out / "eval_val_subset1.json").read_text())
    assert subset["subset"] == 1 and subset["images"] == 1
    assert json.loads((out / "eval_val.json").read_text()) == full  # not replaced
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        evaluate_main([str(out), "--subset", "0"])
    assert exit_.value.code == 2
    assert "--subset: expected an int >= 1" in capsys.readouterr().err
    wrong = tmp_path / "mistyped"
    assert evaluate_main([str(out), "--root", str(wrong)]) == 2
    assert "pass --make-data" in capsys.readouterr().err and not wrong.exists()
    assert evaluate_main([str(out), "--split", "test"]) == 2  # no such split: named
    assert "leftImg8bit/test" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "0"], "--sizes: expected ints >= 1"),
        (["--channels", "-8"], "--channels: expected ints >= 1"),
        (["--channels", "6"], "--channels: expected a multiple of 4"),
        (["--repeats", "0"], "--repeats: expected ints >= 1"),
        (["--threads", "0"], "--threads: expected ints >= 1"),
        (["--timeout", "0"], "--timeout: expected seconds > 0"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bench_exits_nonzero_on_invalid_arguments(argv, message, capsys):
    from dgmn_ref.cli import bench_main

    with pytest.raises(SystemExit) as exit_:
        bench_main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_coco_config_uses_the_files_categories(coco):
    from dgmn_ref.training import TrainConfig

    def only_cars(d):
        d["categories"] = [{"id": 3, "name": "car", "supercategory": ""}]
        d["annotations"] = [dict(a, category_id=3) for a in d["annotations"]]

    for split in ("train2017", "val2017"):
        edit_json(coco / "annotations" / f"instances_{split}.json", only_cars)
    cfg = TrainConfig.from_dict({"dataset": "coco", "root": str(coco)}).check()
    assert cfg.class_names() == ("background", "car") and cfg.num_classes() == 2


def test_run_stopped_before_its_first_checkpoint_says_how_to_restart(train_root, tmp_path, capsys):
    """The audit: a refused re-run suggested --resume, which then failed too."""
    from dgmn_ref.cli import train_main

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "log.jsonl").write_text('{"iteration": 1, "loss": 2.0}\n')
    assert train_main(tiny_argv(train_root, out)) == 2
    assert "it has no checkpoint to resume from: pass --overwrite" in capsys.readouterr().err
    assert train_main(tiny_argv(train_root, out, "--resume")) == 2
    assert "stopped before its first checkpoint; start it again with --overwrite" in (
        capsys.readouterr().err
    )
    assert train_main(tiny_argv(train_root, out, "--overwrite")) == 0


def test_training_on_coco_with_85_categories(coco, coco_root, tmp_path, capsys):
    """The audit's ``Target 85 is out of bounds``: the model gets the file's 86 classes."""
    from dgmn_ref.cli import evaluate_main, train_main

    extra = [{"id": 100 + i, "name": f"thing{i}", "supercategory": ""} for i in range(5)]

    def add_and_use(d):
        d["categories"].extend(extra)
        d["annotations"][0]["category_id"] = 104  # label 85: the last class

    for split in ("train2017", "val2017"):
        edit_json(coco / "annotations" / f"instances_{split}.json", add_and_use)
    out = tmp_path / "run"
    argv = tiny_argv(
        coco, out, "--dataset", "coco", "--train-subset", "2", "--crop-size", "24", "48"
    )
    assert train_main(argv) == 0
    assert load_run(out)["model"]["classifier.weight"].shape[0] == 86
    capsys.readouterr()
    assert evaluate_main([str(out), "--root", str(coco_root)]) == 2  # COCO's 80 categories
    assert "do not fit the model of its config with the data at" in capsys.readouterr().err
