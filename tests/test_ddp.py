"""DistributedDataParallel training with 2 CPU processes on gloo (what torchrun starts).

torch 2.13's ``SyncBatchNorm`` raises for CPU tensors in training mode ("SyncBatchNorm
expected input tensor to be on GPU"), so on CPU the trainer keeps per-process BatchNorm and
says so; this test freezes BatchNorm (``freeze_bn``: running statistics, as when
fine-tuning with small batches) and turns dropout off, so that one process with the global
batch computes the same function. The loss is the mean over the global batch's valid
pixels in both cases (see :func:`dgmn_ref.train.train`), hence equal gradients.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from dgmn_ref.train import TrainConfig, train

WORLD = 2


def _config(root, out) -> TrainConfig:
    return TrainConfig(
        dataset="synthetic", root=str(root), out=str(out), depth=18, width=4,
        head_channels=8, context="dgmn", variant="da_dw", impl="reference", dropout=0.0,
        freeze_bn=True, iterations=2, batch_size=4, crop_size=[32, 48], num_workers=0,
        checkpoint_every=2, log_every=1, progress=False, lr=0.05,
    )  # fmt: skip


def _worker(rank: int, root: str, out: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
    )  # fmt: skip
    torch.set_num_threads(1)  # a spawned process of its own: nothing to restore
    losses = []
    result = train(_config(root, out), callback=lambda i, v: losses.append(v["loss"]))
    torch.save(result["model"].state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}_losses.json"), "w") as f:
        json.dump(losses, f)


@pytest.mark.slow
def test_ddp_matches_single_process(synthetic_root, tmp_path, free_port, one_thread):
    ddp_out = tmp_path / "ddp"
    ddp_out.mkdir()
    mp.start_processes(
        _worker, args=(str(synthetic_root), str(ddp_out), free_port()), nprocs=WORLD,
        start_method="spawn",
    )  # fmt: skip
    rank0 = torch.load(ddp_out / "rank0.pt", weights_only=True)
    rank1 = torch.load(ddp_out / "rank1.pt", weights_only=True)
    # gradients were all-reduced: both replicas hold the same weights
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    # rank 0 alone wrote the checkpoint, with both processes' RNG states
    state = torch.load(ddp_out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == WORLD and len(state["rng"]) == WORLD

    single_run = train(_config(synthetic_root, tmp_path / "single"))
    single = single_run["model"].state_dict()
    initial = _initial_weights(synthetic_root, tmp_path)
    moved = 0
    for k, v in single.items():
        torch.testing.assert_close(rank0[k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved += not torch.equal(v, initial[k])
    assert moved > 10  # the two steps changed the weights

    # callbacks (on every process) and the log see the loss of the global batch: the mean
    # over the processes, which is the single process's loss, not one process's share
    want = [record["loss"] for record in single_run["history"]]
    logged = [json.loads(line)["loss"] for line in (ddp_out / "log.jsonl").read_text().splitlines()]
    for rank in range(WORLD):
        seen = json.loads((ddp_out / f"rank{rank}_losses.json").read_text())
        assert seen == pytest.approx(want, rel=1e-4), (rank, seen, want)
    assert logged == pytest.approx(want, rel=1e-4)


def _initial_weights(root, tmp_path) -> dict[str, torch.Tensor]:
    from dgmn_ref.train import build_model, seed_everything

    cfg = _config(root, tmp_path / "unused")
    seed_everything(cfg.seed)
    return build_model(cfg).state_dict()
