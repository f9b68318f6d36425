"""Interpolate two checkpoints of one network, parameter by parameter (weight-space ensembling, as in
WiSE-FT: a fine-tuned net and the net it started from, averaged, often keeps the gains of both).

    PYTHONPATH=. python scripts/average_weights.py weights/unet.safetensors run11.safetensors out.safetensors \
        --alpha 0.5 --card selection="..."

`alpha` is the share of the second checkpoint (0 gives the first, 1 the second). Both must hold
the same architecture and arguments; the card is the second's, with `averaged` saying what was mixed.
"""
from __future__ import annotations

import argparse

from denoise_core.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("dest")
    ap.add_argument("--alpha", type=float, default=0.5, help="share of the second checkpoint (0-1)")
    ap.add_argument("--card", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    if not 0 <= a.alpha <= 1:
        raise SystemExit(f"--alpha {a.alpha}: must be within 0..1")
    one, two = load_checkpoint(a.first), load_checkpoint(a.second)
    if (one.arch, one.arch_args) != (two.arch, two.arch_args):
        raise SystemExit(f"{a.first} is {one.arch} {one.arch_args}, {a.second} is {two.arch} {two.arch_args}: "
                         "only checkpoints of the same network can be averaged")
    net = two.build()
    mixed = {k: ((1 - a.alpha) * one.state_dict[k].double() + a.alpha * v.double()).to(v.dtype)
             for k, v in two.state_dict.items()}
    net.load_state_dict(mixed)
    card = {k: v for k, v in two.card.items() if not k.startswith("_")}
    card["averaged"] = f"{1 - a.alpha:g} x {a.first} + {a.alpha:g} x {a.second}, parameter by parameter"
    for item in a.card:
        key, _, value = item.partition("=")
        card[key] = value
    save_checkpoint(a.dest, net, card)
    print(f"wrote {a.dest}: {card['averaged']}")


if __name__ == "__main__":
    main()
