"""Training (Appendix A.2.2): poly LR, atomic checkpoints, exact resume, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dgmn_ref.cli import evaluate_main
from dgmn_ref.cli import train_main as main
from dgmn_ref.train import (
    TrainConfig,
    atomic_save,
    load_run,
    poly_lr,
    train,
)


def tiny_config(root, out, **overrides) -> TrainConfig:
    """A model and schedule that run a step in well under a second on 2 cores."""
    values = dict(
        dataset="synthetic", root=str(root), out=str(out), depth=18, width=4,
        head_channels=8, context="dgmn", variant="da_dw_ds", impl="reference",
        iterations=6, batch_size=2, crop_size=[32, 48], scale_range=[0.75, 1.25],
        num_workers=0, checkpoint_every=3, log_every=1, progress=False, train_subset=5,
    )  # fmt: skip
    return TrainConfig.from_dict(values | overrides)


def test_poly_lr_values():
    assert poly_lr(0.01, 0, 40_000) == 0.01
    assert poly_lr(0.01, 40_000, 40_000) == 0.0
    assert math.isclose(poly_lr(0.01, 20_000, 40_000), 0.01 * 0.5**0.9)
    assert math.isclose(poly_lr(0.01, 30_000, 40_000, power=1.0), 0.0025)
    values = [poly_lr(0.01, i, 100) for i in range(101)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_atomic_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"iteration": 1}, path)

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"iteration": 2}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert load_run(path)["iteration"] == 1  # verified against its content hash


class Interrupt(Exception):
    pass


def test_resume_is_bit_identical(synthetic_root, tmp_path, one_thread):
    # 6 iterations, 2 batches per epoch: the interruption at 3 is in the middle of epoch 1
    full = train(tiny_config(synthetic_root, tmp_path / "full", dropout=0.5))

    def stop_at_3(iteration, _):
        if iteration == 3:
            raise Interrupt

    cfg = tiny_config(synthetic_root, tmp_path / "split", dropout=0.5)
    with pytest.raises(Interrupt):
        train(cfg, callback=stop_at_3)
    state = load_run(tmp_path / "split")
    assert state["iteration"] == 3 and state["sampler"] == {"epoch": 1, "batch": 1}
    resumed = train(cfg, resume=True)
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = load_run(tmp_path / "full"), load_run(tmp_path / "split")
    assert sa["iteration"] == sb["iteration"] == 6
    momenta = [sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()]
    for x, y in zip(*momenta, strict=True):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])

    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "full") == losses(tmp_path / "split")


def test_refuses_to_overwrite_a_run(synthetic_root, tmp_path, capsys):
    cfg = tiny_config(synthetic_root, tmp_path / "run", iterations=1, context="none")
    train(cfg)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        train(cfg)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    argv = ["--config", str(tmp_path / "run" / "config.json")]
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    train(cfg, overwrite=True)
    with pytest.raises(ValueError, match=r"settings \['lr'\] differ"):
        train(TrainConfig.from_dict(cfg.to_dict() | {"lr": 0.1, "iterations": 1}), resume=True)


def test_cli_train_then_evaluate(synthetic_root, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "--dataset", "synthetic", "--root", str(synthetic_root), "--out", str(out),
        "--context", "dgmn", "--variant", "da_dw_ds", "--impl", "reference",
        "--depth", "18", "--width", "4", "--head-channels", "8", "--iterations", "2",
        "--batch-size", "2", "--crop-size", "32", "48", "--num-workers", "0", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("config: {")
    saved = json.loads((out / "config.json").read_text())
    assert saved["variant"] == "da_dw_ds" and saved["iterations"] == 2
    assert len((out / "log.jsonl").read_text().splitlines()) == 1  # log_every 10: the end
    assert evaluate_main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "context pixels" in text
    result = json.loads((out / "eval_val.json").read_text())
    assert 0 <= result["miou"] <= 1 and len(result["iou"]) == 19
    # resume a finished run with more iterations is refused (the poly schedule would change)
    assert main(["--out", str(out), "--resume", "--iterations", "4"]) == 2
    assert "['iterations'] differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "imagenet"], "dataset: expected one of ('cityscapes', 'coco', 'synthetic'),"
         " got 'imagenet'"),
        (["--dataset", "synthetic", "--context", "attention"], "context: expected one of"),
        (["--dataset", "cityscapes"], "dataset 'cityscapes' needs --root DIR"),
        (["--dataset", "coco", "--root", "/no/such/dir"], "'/no/such/dir' is not a directory"),
        (["--variant", "dadw"], "variant: expected one of"),
        (["--out", "/no/run", "--resume"], "no config.json in /no/run"),
        (["--dataset", "synthetic", "--optimizer", "adam"], "optimizer: expected one of"),
        (["--dataset", "synthetic", "--context", "nonlocal", "--rates", "1", "2"],
         "rates: only for contexts"),
        (["--dataset", "synthetic", "--rates", "0"], "rates: expected a list of ints >= 1"),
    ],
)  # fmt: skip
def test_cli_bad_input(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dgmn-ref train: error: ") and message in err, err


def test_cli_evaluate_bad_input(capsys):
    assert evaluate_main(["/no/such/run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dgmn-ref evaluate: error: no checkpoint at /no/such/run"), err
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["/no/such/run", "--impl", "fastest"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fastest' (choose from 'reference', 'fast', 'auto')" in err


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_rates_override_and_optimizer(synthetic_root, tmp_path, optimizer):
    cfg = tiny_config(
        synthetic_root, tmp_path / "run", rates=[1, 2], optimizer=optimizer, iterations=2
    )
    result = train(cfg.check())
    assert result["model"].context.rates == (1, 2), "rates must replace the variant's"
    saved = load_run(tmp_path / "run")
    assert saved["config"]["rates"] == [1, 2]
    kind = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[optimizer]
    assert ("exp_avg" in str(saved["optimizer"]["state"])) == (kind is torch.optim.AdamW)


@pytest.mark.parametrize("context", ["dgmn", "deformable"])
def test_walk_lr_mult_scales_only_the_walk_convolutions(synthetic_root, tmp_path, context):
    """walk_lr_mult: the walk convs (eq. 4) get lr x mult at every step, the rest lr."""
    from dgmn_ref.training.build import build_model, build_optimizer

    cfg = tiny_config(synthetic_root, tmp_path / "run", context=context, walk_lr_mult=0.1)
    model = build_model(cfg.check())
    groups = build_optimizer(cfg, model).param_groups
    assert [g["lr_mult"] for g in groups] == [1.0, 0.1]
    walks = {id(p) for n, p in model.named_parameters() if ".walk_conv" in n}
    assert walks and {id(p) for p in groups[1]["params"]} == walks
    assert len(groups[0]["params"]) + len(walks) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="walk_lr_mult: expected a finite number > 0"):
        tiny_config(synthetic_root, tmp_path / "bad", walk_lr_mult=0).check()

    train(tiny_config(synthetic_root, tmp_path / "run2", context=context, walk_lr_mult=0.1))
    saved = load_run(tmp_path / "run2")["optimizer"]["param_groups"]
    assert saved[0]["lr"] > 0 and saved[1]["lr"] == pytest.approx(0.1 * saved[0]["lr"])
