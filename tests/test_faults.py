"""Fault injection: the cases of the reliability audit (issue 12), each with its message,
its exit status, and the check that no good file was lost.

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
from dgmn_ref.checkpoint import (
    CheckpointError,
    load_checkpoint,
    nonfinite_tensors,
    save_checkpoint,
    state_digest,
    write_error,
)
from dgmn_ref.data.check import DataError, check_data, coco_class_names, require_valid_data
from dgmn_ref.data.check import main as check_data_main
from dgmn_ref.data.synthetic import make_synthetic_cityscapes, make_synthetic_coco
from dgmn_ref.layer import DGMN
from dgmn_ref.runlock import LOCK, RunLock, RunLockedError, pid_alive, remove_stale_tmp

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
    path = save_checkpoint(small_state(), tmp_path / "checkpoint.pt")
    state = load_checkpoint(path, threads=torch.get_num_threads())
    assert state["integrity"]["torch_threads"] == torch.get_num_threads()
    assert state["integrity"]["sha256"] == state_digest(small_state())
    assert torch.equal(state["model"]["w"], small_state()["model"]["w"])
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left


def test_checkpoint_thread_count_mismatch_is_refused(tmp_path):
    path = save_checkpoint(small_state(), tmp_path / "checkpoint.pt")
    other = torch.get_num_threads() + 1
    with pytest.raises(CheckpointError, match=f"{path}.*{torch.get_num_threads()} torch threads"):
        load_checkpoint(path, threads=other)


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
    path = save_checkpoint(small_state(), tmp_path / "checkpoint.pt")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("seed", range(8))
def test_hundred_flipped_bytes_are_detected(tmp_path, seed):
    """The audit flipped 100 bytes of a checkpoint and evaluate scored it anyway."""
    path = save_checkpoint(small_state(), tmp_path / "checkpoint.pt")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(data), size=100, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_one_flipped_weight_byte_is_detected(tmp_path):
    state = small_state()
    path = save_checkpoint(state, tmp_path / "checkpoint.pt")
    data = bytearray(path.read_bytes())
    needle = state["model"]["w"].numpy().tobytes()[:16]
    at = bytes(data).index(needle)  # inside the stored tensor: only the hash can tell
    data[at + 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash does not match"):
        load_checkpoint(path)


def test_checkpoint_without_record_loads_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(small_state(), path)
    with pytest.warns(UserWarning, match="no integrity record"):
        assert load_checkpoint(path)["iteration"] == 3


def test_failed_save_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(small_state(0), tmp_path / "checkpoint.pt")
    good = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr("dgmn_ref.checkpoint.shutil.disk_usage", lambda folder: _Usage(0))
    with pytest.raises(OSError, match="no space left on device writing .*checkpoint.pt") as err:
        save_checkpoint(small_state(1), path)
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
        save_checkpoint(small_state(), missing)


def test_nonfinite_tensors_are_named():
    state = small_state()
    assert nonfinite_tensors(state) == []
    state["model"]["w"][0, 0] = float("nan")
    state["model"]["b"][1] = float("inf")
    assert nonfinite_tensors(state) == ["model.b", "model.w"]


def test_kill_during_checkpoint_write_keeps_the_good_one(tmp_path):
    """SIGKILL between writing the temporary file and the rename (DGMN_SAVE_DELAY)."""
    path = save_checkpoint(small_state(0), tmp_path / "checkpoint.pt")
    good = path.read_bytes()
    child = python(
        f"""
        import torch
        from dgmn_ref.checkpoint import save_checkpoint
        save_checkpoint({{"model": {{"w": torch.ones(64, 64)}}}}, {str(path)!r})
        """,
        DGMN_SAVE_DELAY="60",
    )
    tmp = tmp_path / f".checkpoint.pt.tmp-{child.pid}"
    wait_for(lambda: tmp.is_file() and tmp.stat().st_size > 0 or child.poll() is not None)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert path.read_bytes() == good and tmp.exists()
    assert load_checkpoint(path)["iteration"] == 3
    assert remove_stale_tmp(tmp_path) == [tmp]
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


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
