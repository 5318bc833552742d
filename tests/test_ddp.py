"""DistributedDataParallel training with 2 CPU processes on gloo (what torchrun starts).

torch 2.13's ``SyncBatchNorm`` raises for CPU tensors in training mode ("SyncBatchNorm
expected input tensor to be on GPU"), so on CPU the trainer keeps per-process BatchNorm and
says so; this test freezes BatchNorm (``freeze_bn``: running statistics, as when
fine-tuning with small batches) and turns dropout off, so that one process with the global
batch computes the same function. The loss is the mean over the global batch's valid
pixels in both cases (see :func:`dgmn_ref.train.train`), hence equal gradients.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dgmn_ref.data.synthetic import make_synthetic_cityscapes
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
    torch.set_num_threads(1)
    result = train(_config(root, out))
    torch.save(result["model"].state_dict(), os.path.join(out, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic_cityscapes"
    return make_synthetic_cityscapes(root, n_train=8, n_val=2, size=(48, 96), seed=0)


def test_ddp_matches_single_process(synthetic_root, tmp_path):
    ddp_out = tmp_path / "ddp"
    ddp_out.mkdir()
    mp.start_processes(
        _worker, args=(str(synthetic_root), str(ddp_out), _free_port()), nprocs=WORLD,
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

    torch.set_num_threads(1)
    single = train(_config(synthetic_root, tmp_path / "single"))["model"].state_dict()
    initial = _initial_weights(synthetic_root, tmp_path)
    moved = 0
    for k, v in single.items():
        torch.testing.assert_close(rank0[k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved += not torch.equal(v, initial[k])
    assert moved > 10  # the two steps changed the weights


def _initial_weights(root, tmp_path) -> dict[str, torch.Tensor]:
    from dgmn_ref.train import build_model, seed_everything

    cfg = _config(root, tmp_path / "unused")
    seed_everything(cfg.seed)
    return build_model(cfg).state_dict()
