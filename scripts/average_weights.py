"""Interpolate two checkpoints of one network, parameter by parameter (weight-space ensembling, as in
WiSE-FT: a fine-tuned net and the net it started from, averaged, often keeps the gains of both).

    PYTHONPATH=. python scripts/average_weights.py denoise_core/weights/unet.safetensors finetuned.safetensors \
        out.safetensors --alpha 0.5 --card selection="..."

`alpha` is the share of the second checkpoint (0 gives the first, 1 the second). Both must hold
the same architecture and arguments, or, with `--grow`, the second a smaller net of the first's
kind that grows into it exactly (a U-Net without the noise-level input: zero weights for the new
input planes, as `denoise-train --grow` starts). The card is the first's, with `averaged` saying
what was mixed.

The shipped unet (0.5.0) is 0.8 x (0.5 x unet 0.4 + 0.5 x unet 0.4 fine-tuned on mix-v5) + 0.2 x unet 0.3
(docs/models.md):

    PYTHONPATH=. python scripts/average_weights.py unet-0.4.safetensors unet-0.4-mix-v5.safetensors half.safetensors
    PYTHONPATH=. python scripts/average_weights.py half.safetensors unet-0.3.safetensors unet.safetensors \
        --alpha 0.2 --grow
"""
from __future__ import annotations

import argparse
from typing import Any, cast

from denoise_core.inference.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("dest")
    ap.add_argument("--alpha", type=float, default=0.5, help="share of the second checkpoint (0-1)")
    ap.add_argument("--grow", action="store_true",
                    help="the second holds a smaller net of the first's kind: grow it first (exactly)")
    ap.add_argument("--card", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    if not 0 <= a.alpha <= 1:
        raise SystemExit(f"--alpha {a.alpha}: must be within 0..1")
    one, two = load_checkpoint(a.first), load_checkpoint(a.second)
    net = one.build()
    second = two.state_dict
    if a.grow and one.arch == two.arch and hasattr(net, "grow_from"):
        try:
            second = cast(Any, net).grow_from(second)  # checked above
        except ValueError as e:
            raise SystemExit(f"{a.second}: {e}") from None
    elif (one.arch, one.arch_args) != (two.arch, two.arch_args):
        raise SystemExit(f"{a.first} is {one.arch} {one.arch_args}, {a.second} is {two.arch} {two.arch_args}: "
                         "only checkpoints of the same network can be averaged"
                         + ("" if a.grow else " (--grow: the second a smaller net of the first's kind)"))
    mixed = {k: ((1 - a.alpha) * v.double() + a.alpha * second[k].double()).to(v.dtype)
             for k, v in one.state_dict.items()}
    net.load_state_dict(mixed)
    card = {k: v for k, v in one.card.items() if not k.startswith("_")}
    card["averaged"] = f"{1 - a.alpha:g} x {a.first} + {a.alpha:g} x {a.second}, parameter by parameter"
    for item in a.card:
        key, _, value = item.partition("=")
        card[key] = value
    save_checkpoint(a.dest, net, card)
    print(f"wrote {a.dest}: {card['averaged']}")


if __name__ == "__main__":
    main()
