"""Write denoise_core/weights/<name>.md, the card of each shipped weight file, from its checkpoint metadata and,
when given, bench/quality.py's JSON (`--quality docs/bench/quality.json`)."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from denoise_core.inference.api import shipped_models
from denoise_core.inference.checkpoint import load_checkpoint

_CAMERA = ("camera noise (a random darktable profile of 374 camera models at ISO 1600-25600, exposure "
           "pushed 0-2 EV, random white balance and colour matrix, through unprocessing: sRGB -> linear -> "
           "Bayer mosaic -> Poisson-Gaussian -> bilinear demosaic of the noise -> sRGB)")
_DEVELOP = ("camera developments (`denoise_core.noise.pipeline`, TRAIN_SETTINGS: a darktable profile of a camera "
            "whose maker is not held out, ISO 800-25600, pushed 0-2 EV; sRGB -> inverse tone curve (sRGB, "
            "sRGB + S-curve or a camera base curve) -> inverse colour matrix and white balance -> RGGB mosaic -> "
            "per-photosite Poisson-Gaussian noise -> white balance -> demosaic of signal and noise together "
            "(bilinear, Malvar-He-Cutler, Hamilton-Adams or edge-weighted) -> colour matrix -> tone curve -> "
            "unsharp mask (70%, radius 0.5-1.5, amount 0.2-1.2) -> chroma noise reduction (30%) -> "
            "downscaling (20%) -> JPEG q60-98 4:2:0/4:4:4 (55%), 8-bit (35%) or 16-bit (10%); target: the "
            "same development of the noise-free mosaic, without noise reduction or JPEG)")
# the `mix` spec changed several times; a card's `mix_version` says which one its weights saw (none: v1)
NOISE_TEXT = {
    "mix-v3 mix-v3": f"per patch: 45% {_DEVELOP}, 10% {_CAMERA}, 28% Gaussian (half with sigma 0-55, half "
                     f"5-30), 4% Poisson-Gaussian, 6% no noise, 7% a clean patch saved as JPEG q75-98 (target: "
                     f"itself); patches cut 16 px inside a larger development",
    "mix-v4 mix-v4": f"per patch: 38% {_DEVELOP}, 8% the same developments without noise (the camera file, "
                     f"JPEG and all, is its own target), 10% {_CAMERA}, 24% Gaussian (half with sigma 0-55, "
                     f"half 5-30), 4% Poisson-Gaussian, 8% no noise, 8% a clean patch saved as JPEG q75-98 "
                     f"(target: itself); patches cut 16 px inside a larger development",
    "mix-v5 mix-v5": f"per patch: 36% {_DEVELOP}, 8% the same developments without noise (the camera file, "
                     f"JPEG and all, is its own target), 13% {_CAMERA}, 25% Gaussian (half with sigma 0-55, "
                     f"half 5-30), 3% Poisson-Gaussian, 7% no noise, 8% a clean patch saved as JPEG q75-98 "
                     f"(target: itself); patches cut 16 px inside a larger development",
    "mix-v6 mix-v6": f"per patch: 33% mild in-camera noise (`mild-camera`: drawn in YCbCr, luma sigma 1-9 on 0-255 "
                     f"log-uniform, chroma 0.3-1.3x luma; fine grain blurred 0.45-0.95 px (chroma 0.6-1.6) plus "
                     f"blotches blurred 2-5 px; scaled with the square root of the signal; 8-bit, JPEG q80-98 70% of "
                     f"the time; target: the clean photo), 26% {_DEVELOP}, 3% the same developments without noise "
                     f"(their own target), 10% {_CAMERA}, 20% Gaussian (half with sigma 0-55, half 5-30), 2% "
                     f"Poisson-Gaussian, 3% no noise, 3% a clean patch saved as JPEG q75-98 (target: itself); "
                     f"patches cut 16 px inside a larger development",
    "mix v1": f"per patch: 45% {_CAMERA}, 40% Gaussian with sigma uniform in 0-55, 10% Poisson-Gaussian "
              f"in linear light, 5% no noise; all clipped and quantized to 8 bits",
    "mix v2": f"per patch: 40% {_CAMERA}, 45% Gaussian (half with sigma uniform in 0-55, half in 5-30), "
              f"10% Poisson-Gaussian in linear light, 5% no noise; all clipped and quantized to 8 bits",
}
LOSS_TEXT = {"l1": "L1", "l2": "L2", "psnr": "PSNR (minus the mean per-image PSNR, softly capped at 50 dB)"}


def card(name: str, path: Path, quality: dict | None, real: str | None = None) -> str:
    ck = load_checkpoint(path)
    net = ck.build()
    params = sum(p.numel() for p in net.parameters())
    c = ck.card
    noise = c.get("noise", "?")
    version = c.get("mix_version", "v1")
    noise_text = NOISE_TEXT.get(f"{noise} {version}", NOISE_TEXT.get(f"{noise} {version.replace('mix-', '')}", noise))
    lines = [
        f"# `{name}` weights",
        "",
        f"- file: `{path.name}`, {path.stat().st_size / 1e6:.2f} MB, "
        f"sha256 `{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}…`",
        f"- architecture: `{ck.arch}` {json.dumps(ck.arch_args) if ck.arch_args else '(default arguments)'}, "
        f"{params:,} parameters, input sides padded to a multiple of {getattr(net, 'size_multiple', 1)}, "
        f"receptive radius {getattr(net, 'receptive_radius', '?')} px",
        f"- data: {c.get('data', '?')}",
        f"- noise: `{noise}` — {noise_text}",
        f"- training: {c.get('steps', '?')} steps, batch {c.get('batch', '?')} of "
        f"{c.get('patch', '?')}x{c.get('patch', '?')} patches with flips/rotations, "
        f"{LOSS_TEXT.get(str(c.get('loss')), str(c.get('loss', '?')).upper())} loss, "
        f"Adam with warm-up and cosine decay, "
        f"gradient clipping 1.0, CPU only, {c.get('precision', 'fp32')} forward pass "
        f"({c.get('trained_with', 'scripts/train_shipped.py')})"
        + (f"; fine-tuned from `{c['init']}` (earlier weights; the history is in training/README.md)"
           if c.get("init") else "")
        + (f"; grown {c['grown']}" if c.get("grown") else "")
        + (f"; {c['history']}" if c.get("history") else ""),
        *([f"- averaged: {c['averaged']}"] if c.get("averaged") else []),
        *(["- noise-level input: a map of the local noise (in units of 25/255) and a given-flag; half the "
           "training patches were told their true map, half nothing (blind, the default at inference); "
           "`noise_level` / `--noise-level` sets it (`denoise_core/inference/levels.py`)"]
          if ck.arch_args.get("level_input") else []),
        f"- validation during training: PSNR {c.get('val_psnr', '?')} dB, SSIM {c.get('val_ssim', '?')} "
        f"({c.get('val_noise', 'mix')}, 2 crops of 256x256 from each validation photo)"
        + (f"; weights of the {c['selection']}" if c.get("selection") else ""),
    ]
    summary = (quality or {}).get("summary", {})
    if name in summary:
        noisy = summary.get("noisy", {})
        prec = (quality or {}).get("precision", {}).get(name, "fp32")
        lines += ["", f"## Measured on the benchmark photos (`bench/quality.py`, never trained or selected on; "
                      f"8-bit inputs, run in {prec})", "",
                  "`camera` is the v2 simulator's own noise (in every training mix); `held-out` is the mean of "
                  "the camera developments whose settings training never saw (bench/pipelines.py).", "",
                  "| noise | noisy PSNR | PSNR | SSIM |", "| --- | ---: | ---: | ---: |"]
        for cond, r in summary[name].items():
            if r.get("psnr") is None:
                continue
            n = noisy.get(cond, {}).get("psnr")
            lines.append(f"| {cond} | {n:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} |" if n is not None
                         else f"| {cond} | – | {r['psnr']:.2f} | {r['ssim']:.4f} |")
    if real:
        lines += ["", "## Measured on real camera noise (`bench/real.py`, evaluation only)", "", real.strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quality", type=Path)
    ap.add_argument("--real", type=Path, help="bench/real.py's --out table, added to the default's card")
    a = ap.parse_args()
    q = json.loads(a.quality.read_text()) if a.quality else None
    real = a.real.read_text() if a.real else None
    for name, path in shipped_models().items():
        out = path.with_suffix(".md")
        out.write_text(card(name, path, q, real if name == "unet" else None))
        print("wrote", out)


if __name__ == "__main__":
    main()
