"""Launched by tests/test_train.py under `torchrun --nproc_per_node 2`: trains a tiny `seed` net with
denoise_core.training.train.train (which wraps it in DistributedDataParallel) and writes, per rank, the
final weights and a fingerprint of every batch that rank drew, to OUTDIR/rank<R>.pt.

    torchrun --standalone --nproc_per_node 2 tests/ddp_ranks.py OUTDIR
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from denoise_core.models import create_model  # noqa: E402
from denoise_core.noise.synth import noisy_pair  # noqa: E402
from denoise_core.training.train import (TrainConfig, dist_info, init_distributed, random_patches,  # noqa: E402
                                         shutdown_distributed, train)


def main(outdir: Path) -> None:
    init_distributed("cpu")
    di = dist_info()
    rng = np.random.default_rng(0)  # the same two small "photos" on every rank
    yy, xx = np.mgrid[0:96, 0:96]
    imgs = [np.clip(np.stack([xx * 2, yy * 2, (xx + yy)], -1) + rng.integers(0, 40, (96, 96, 3)), 0, 255)
            .astype(np.uint8) for _ in range(2)]
    seen: list[torch.Tensor] = []

    def batches(gen: torch.Generator):
        clean = random_patches(imgs, 4, 32, gen)
        seen.append(clean.double().sum(dim=(1, 2, 3)))
        return noisy_pair(clean, "gaussian:25", gen)

    cfg = TrainConfig(arch="seed", noise="gaussian:25", patch=32, batch=4, steps=12, val_every=6,
                      checkpoint_every=6, device="cpu", threads=1, lr=1e-3)
    torch.manual_seed(0)  # the same starting weights on both ranks (DDP would also broadcast rank 0's)
    model = create_model("seed")
    # no validation set: rank 0 writes the weights of every 6th step, so the file holds the last step's
    train(cfg, outdir / "ddp.safetensors", batches=batches, val_pairs=[], model=model)
    torch.save({"world": di.world, "rank": di.rank, "seen": torch.stack(seen),
                "model": {k: v.detach().clone() for k, v in model.state_dict().items()}},
               outdir / f"rank{di.rank}.pt")
    shutdown_distributed(finished=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # as denoise-train does under torchrun: torch's teardown after a gloo run sometimes aborts
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
