"""Write the weights a training run holds at its last step (from `<out>.state.pt`) as a checkpoint.

The run's own `<out>` keeps its best validation step; shipping the last step instead avoids
picking weights on the photos the benchmark measures. The card is the run's, with the step and
validation figures of the last evaluation, plus any `--card KEY=VALUE` lines.

    PYTHONPATH=. python scripts/export_state.py unet_g4.safetensors denoise_core/weights/unet.safetensors \
        --card selection="final step (...)"
"""
from __future__ import annotations

import argparse

import torch

from denoise_core.inference.checkpoint import load_checkpoint, save_checkpoint
from denoise_core.models import create_model
from denoise_core.training.train import state_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_out", help="the --out of the training run")
    ap.add_argument("dest")
    ap.add_argument("--card", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    st = torch.load(state_path(a.run_out), map_location="cpu", weights_only=True)
    cfg = st["config"]
    net = create_model(cfg["arch"], **cfg["arch_args"])
    net.load_state_dict(st["model"])
    card = {k: v for k, v in load_checkpoint(a.run_out).card.items() if not k.startswith("_")}
    last = next((h for h in reversed(st["history"]) if h.get("val_psnr") is not None), None)
    if last is None or last["step"] != st["step"]:
        raise SystemExit(f"{state_path(a.run_out)}: step {st['step']} was not evaluated (last evaluation at "
                         f"step {last['step'] if last else 'none'}); finish the run or evaluate it first")
    card.update({"steps": st["step"], "val_psnr": round(last["val_psnr"], 3), "val_ssim": round(last["val_ssim"], 4)})
    for item in a.card:
        key, _, value = item.partition("=")
        card[key] = value
    save_checkpoint(a.dest, net, card)
    print(f"wrote {a.dest}: step {st['step']}, validation PSNR {card['val_psnr']}")


if __name__ == "__main__":
    main()
