"""`denoise-train`: train denoising weights from your own noisy/clean pairs, or from clean photos
with synthetic noise (for example your camera's darktable noise profile).

    denoise-train --noisy high_iso/ --clean base_iso/ --arch unet --out mine.safetensors --steps 20000
    denoise-train --clean photos/ --noise 'camera:"Nikon D750"@12800' --out d750.safetensors
    denoise-train --init default --clean photos/ --noise 'camera:"Nikon D750"@12800' --lr 2e-4 \
        --steps 3000 --out d750-ft.safetensors      (fine-tune the shipped model: far fewer steps)
    denoise-train --domain raw --clean photos/ --out raw-mine.safetensors --steps 20000
        (the raw-domain model for camera raw files: the photos become noisy sensor mosaics)
    torchrun --nproc_per_node 4 -m denoise_cli.train ...same options...   (DistributedDataParallel)

All input problems are reported before training starts. Exit status: 0 done, 1 training failed,
2 bad usage or input, 130 interrupted (continue with --resume).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import click
import numpy as np
import torch

from denoise_core.inference.api import RAW_ARCHS, ModelNotFoundError, resolve_model
from denoise_core.inference.checkpoint import CheckpointError, load_checkpoint
from denoise_core.inference.device import (DEVICES, PRECISIONS, pick_device, pick_precision, precision_name,
                                           use_all_cores)
from denoise_core.imaging.imageio import ImageReadError, read_image
from denoise_core.training.metrics import psnr
from denoise_core.models import create_model, list_models
from denoise_core.inference.levels import training_levels
from denoise_core.noise.camera import NoiseSpecError, list_cameras
from denoise_core.noise.synth import CURRENT_MIX, MIX_VERSIONS, noisy_pair, parse_noise
from denoise_core.training.pairs import PairCheck, PairError, image_files, load_pairs
from denoise_core.training.train import (LOSSES, Progress, TrainConfig, TrainingError, fixed_val_set, init_distributed,
                                         pair_val_set, random_patches, report_paths, shutdown_distributed,
                                         split_by_image, state_path, train)

from .suggest import did_you_mean


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


class InputError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        if _is_main():
            click.echo(f"denoise-train: error: {self.format_message()}", err=True)


def _saved_step(sp: Path) -> int:
    """The step a training state reached; an empty, damaged or foreign state file is an InputError
    naming it (torch.load's EOFError used to reach click, which prints only "Aborted!")."""
    if not sp.is_file():
        raise InputError(f"--resume: {sp} is not a regular file")
    if sp.stat().st_size == 0:
        raise InputError(f"--resume: the training state {sp} is empty (a run killed while creating it?); "
                         "delete it to start over")
    try:
        return int(torch.load(sp, map_location="cpu", weights_only=True)["step"])
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"--resume: {sp} is not a readable training state ({type(e).__name__}: {reason}); "
                         "delete it to start over") from None


class TrainingFailed(InputError):
    exit_code = 1


def _say(msg: str) -> None:
    if _is_main():
        click.echo(msg, err=True)


def _list_cameras(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo("\n".join(list_cameras()))
        ctx.exit(0)


# the arguments denoise_core/weights/unet.safetensors was built with (tests/test_train.py checks them against
# its metadata)
SHIPPED_UNET_ARGS = '{"dec_blocks": [3, 2], "enc_blocks": [2, 3], "level_input": true, "mid_blocks": 6}'
RAW_PATCH = 128  # --domain raw's default patch: 128x128 photosites, 64x64 per packed plane


@click.command(name="denoise-train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--domain", type=click.Choice(["srgb", "raw"]), default="srgb", show_default=True,
              help="srgb: image models (PNG, TIFF, JPEG, ...). raw: the raw-domain model that denoise-batch "
                   "uses on camera raw files: the --clean photos are unprocessed into sensor mosaics with "
                   "darktable camera-profile noise per photosite (ISO 800-25600), architecture 'raw', "
                   "CPU only; no --noisy, --noise or --loss.")
@click.option("--noisy", type=click.Path(path_type=Path), metavar="DIR", help="Folder of noisy photos (pairs mode).")
@click.option("--clean", type=click.Path(path_type=Path), metavar="DIR",
              help="Folder of clean photos (in pairs mode named like the noisy ones).")
@click.option("--noise", "noise_spec", metavar="SPEC",
              help='Synthetic noise instead of pairs: gaussian:SIGMA, gaussian:LO-HI, poisson-gaussian, '
                   'camera:"MAKER MODEL"@ISO, camera:random, pipeline (camera developments: demosaic, '
                   'sharpening, JPEG, ...), mix (the current training mix, ' + CURRENT_MIX + '; '
                   + ', '.join(MIX_VERSIONS) + ' name each version, as the weight cards record).')
@click.option("--arch", type=click.Choice(list_models()), default="unet", show_default=True,
              help="Network to train from scratch. 'unet' alone is the registry's base U-Net (blind; blocks "
                   "per stage: encoder 1, 2, decoder 2, 1); the shipped 'unet' (default) weights are that class "
                   "built with --arch-args '" + SHIPPED_UNET_ARGS + "', as their metadata records. To fine-tune "
                   "the shipped weights, use --init default instead.")
@click.option("--arch-args", default="{}", metavar="JSON",
              help='Architecture arguments, e.g. \'{"widths": [48, 96, 192]}\' for unet/fast, '
                   '\'{"width": 48}\' for seed.')
@click.option("--init", "init", metavar="MODEL",
              help="Start from these weights (a shipped model name such as 'default', or a .safetensors "
                   "file) instead of random ones; the architecture comes from them.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Weights file to write (.safetensors).")
@click.option("--steps", type=click.IntRange(1), default=10000, show_default=True)
@click.option("--patch", type=click.IntRange(8), default=64, show_default=True,
              help=f"Patch side in pixels (--domain raw: photosites, default {RAW_PATCH}).")
@click.option("--batch", type=click.IntRange(1), default=8, show_default=True, help="Patches per step and process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--loss", type=click.Choice(list(LOSSES)), default="l1", show_default=True,
              help="psnr: minus the mean per-image PSNR, so lightly noisy images weigh as much as "
                   "heavily noisy ones in a mix of noise levels.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of whole images held out for validation.")
@click.option("--val-every", type=click.IntRange(1), default=None,
              help="Steps between validations [default: one pass over the training pixels, 50-1000].")
@click.option("--checkpoint-every", type=click.IntRange(1), default=200, show_default=True,
              help="Steps between resumable states; an interruption loses at most this many.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run whose state is beside --out.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="CPU threads per process [default: all].")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Autocast of the forward pass: auto is fp16 (with loss scaling) on CUDA, bf16 on "
                   "CPUs with native bfloat16 (faster steps), else fp32.")
@click.option("--max-shift", type=click.IntRange(0), default=PairCheck.max_shift, show_default=True,
              help="Largest misalignment (px) of a pair that is cropped away instead of rejected.")
@click.option("--list-cameras", is_flag=True, expose_value=False, is_eager=True, callback=_list_cameras,
              help="List the cameras with noise profiles and exit.")
def main(domain, noisy, clean, noise_spec, arch, arch_args, init, out, steps, patch, batch, lr, loss, val_fraction,
         val_every, checkpoint_every, seed, resume, device, threads, precision, max_shift) -> None:
    """Train denoising weights from noisy/clean pairs (--noisy, --clean), from clean photos with
    synthetic noise (--clean, --noise), or the raw-domain model from clean photos (--domain raw --clean)."""
    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    raw = domain == "raw"
    if raw:
        if noisy is not None:
            raise click.UsageError("--domain raw trains from --clean photos alone (unprocessed into noisy sensor "
                                   "mosaics); pairs are not supported there: drop --noisy")
        if noise_spec is not None:
            raise click.UsageError("--domain raw draws its own noise (darktable camera profiles per photosite, "
                                   "ISO 800-25600): drop --noise")
        if given("loss"):
            raise click.UsageError("--domain raw trains with its own loss (L1 after a square root, so shadows "
                                   "count as they will after development): drop --loss")
    if noisy is not None and noise_spec is not None:
        raise click.UsageError("--noise is for training from --clean photos alone; with --noisy the noise "
                               "comes from your pairs")
    if clean is None:
        raise click.UsageError("--clean DIR is required")
    if noisy is None and noise_spec is None and not raw:
        raise click.UsageError("give --noisy DIR to train on pairs, or --noise SPEC for synthetic noise "
                               "(or --domain raw for the raw-domain model)")
    if out is None:
        raise click.UsageError("--out FILE is required")
    if out.suffix.lower() != ".safetensors":
        raise click.UsageError(f"--out {out}: the weights are written as a .safetensors file; name it like "
                               f"{out.with_suffix('.safetensors').name}")
    if raw and not given("arch") and init is None:
        arch = RAW_ARCHS[0]
    if raw and not given("patch"):
        patch = RAW_PATCH
    try:
        spec = parse_noise(noise_spec) if noise_spec is not None else None
    except NoiseSpecError as e:
        raise InputError(str(e)) from None
    init_path = ""
    if init is not None:
        named = [f"--{n.replace('_', '-')}" for n in ("arch", "arch_args") if given(n)]
        if named:
            raise click.UsageError(f"--init takes the architecture from its weights; drop {' and '.join(named)}")
        try:
            init_path = str(resolve_model(init))
            ck = load_checkpoint(init_path)
        except ModelNotFoundError as e:
            raise InputError(f"--init: {e}{did_you_mean(init)}") from None
        except CheckpointError as e:
            raise InputError(f"--init: {e}") from None
        arch, arch_args = ck.arch, json.dumps(ck.arch_args)
    what = f"--init {init} (a {arch!r} model)" if init is not None else f"--arch {arch!r}"
    if raw and arch not in RAW_ARCHS:
        raise InputError(f"--domain raw needs a raw-domain model ({', '.join(RAW_ARCHS)}); {what} is for sRGB images")
    if not raw and arch in RAW_ARCHS:
        raise InputError(f"{what} is a raw-domain model (camera sensor mosaics): add --domain raw")
    try:
        args = json.loads(arch_args)
        if not isinstance(args, dict):
            raise ValueError("not a JSON object")
        multiple = int(getattr(create_model(arch, **args), "size_multiple", 1))
    except (ValueError, TypeError) as e:
        raise InputError(f"--arch-args {arch_args!r} do not fit {arch!r}: {e}") from None
    if raw:  # the net sees half-resolution planes: the patch is twice its multiple
        multiple *= 2
    if patch % multiple:
        raise InputError(f"--patch {patch} must be a multiple of {multiple} for {arch!r}")
    sp = state_path(out)
    if resume and not sp.exists():
        raise InputError(f"--resume: there is no training state at {sp}")
    if not resume and sp.exists():
        raise InputError(f"{sp} holds the state of an earlier run: add --resume to continue it (a larger "
                         f"--steps trains it further), or delete it to start over")
    if resume and (done := _saved_step(sp)) >= steps:
        raise InputError(f"the run in {sp} already finished {done} steps; pass a larger --steps to train it further")
    if not out.parent.is_dir():
        raise InputError(f"--out: folder {out.parent} does not exist")
    if raw and device not in ("auto", "cpu"):
        raise InputError(f"--domain raw trains on the CPU only; drop --device {device}")
    if raw and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("--domain raw trains in one process; run it without torchrun")
    try:
        dev = pick_device("cpu" if raw else device)
        pick_precision(dev, precision)
    except ValueError as e:
        raise InputError(str(e)) from None
    if raw:
        if not threads:
            use_all_cores()  # --threads 0: every core (picking the device no longer sets it)
        _run_raw(clean, out, arch, args, init_path, patch, batch, steps, lr, val_fraction, val_every,
                 checkpoint_every, seed, threads, precision, resume)
        return

    di = init_distributed(device)
    finished = False
    try:
        if noisy is not None:
            train_set, val_pairs, data = _pairs_data(noisy, clean, patch, val_fraction, seed, max_shift)
        else:
            train_set, val_pairs, data = _synthetic_data(clean, spec, patch, val_fraction, seed)
        pixels = sum(a.shape[0] * a.shape[1] for a in train_set[0])
        val_every = val_every or int(np.clip(pixels // (batch * patch * patch * di.world), 50, 1000))
        cfg = TrainConfig(arch=arch, arch_args=args, noise=str(spec) if spec else "pairs", patch=patch,
                          batch=batch, steps=steps, lr=lr, loss=loss, seed=seed, val_every=val_every,
                          checkpoint_every=checkpoint_every, device=device, data=data, threads=threads,
                          init=init_path, precision=precision)
        _say(f"training {arch}{f' from {init_path}' if init_path else ''} on {data}; {steps} steps of "
             f"{batch}x{patch}x{patch} patches"
             f"{f' on each of {di.world} processes' if di.world > 1 else ''}, device {dev.type}, "
             f"{precision_name(pick_precision(dev, precision))}")
        if val_pairs:
            base = np.mean([psnr(n, c) for n, c in val_pairs])
            _say(f"validation: {len(val_pairs)} fixed crops; the noisy input scores {base:.2f} dB PSNR")
        else:
            _say("note: only one image, so nothing is held out for validation; the last weights are kept")
        _run(cfg, out, train_set, spec, val_pairs, resume)
        finished = True
    finally:
        shutdown_distributed(finished=finished)
    if di.world > 1:
        # Every rank has left the group and the weights are written, but torch's interpreter teardown
        # after a gloo run sometimes aborts ("terminate called without an active exception", 1 in
        # about 15 runs on a loaded machine), which torchrun reports as a failed run: skip it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _pairs_data(noisy: Path, clean: Path, patch: int, val_fraction: float, seed: int, max_shift: int):
    try:
        pairs = load_pairs(noisy, clean, PairCheck(max_shift=max_shift))
    except PairError as e:
        raise InputError(str(e)) from None
    _check_sizes([(p.info.name, p.noisy) for p in pairs], patch, "after alignment ")
    for p in pairs:
        _say(f"  pair {p.info.describe()}")
    tr, va = split_by_image(len(pairs), val_fraction, seed)
    train_set = ([pairs[i].clean for i in tr], [pairs[i].noisy for i in tr])
    val = pair_val_set([pairs[i].noisy for i in va], [pairs[i].clean for i in va])
    names = ", ".join(pairs[i].info.name for i in va) or "none"
    return train_set, val, f"{len(tr)} pairs from {noisy} / {clean}; validation: {names}"


def _read_photos(clean: Path, patch: int) -> tuple[list[Path], list[np.ndarray]]:
    """The photos of --clean, every problem (unreadable, smaller than the patch) reported at once."""
    try:
        files = image_files(clean)
    except PairError as e:
        raise InputError(str(e)) from None
    images, problems = [], []
    for f in files:
        try:
            images.append(read_image(f).pixels)
        except ImageReadError as e:
            problems.append(f"  {e}")
    if problems:
        raise InputError(f"{len(problems)} file(s) cannot be read:\n" + "\n".join(problems))
    _check_sizes([(f.name, im) for f, im in zip(files, images)], patch)
    return files, images


def _synthetic_data(clean: Path, spec, patch: int, val_fraction: float, seed: int):
    files, images = _read_photos(clean, patch)
    tr, va = split_by_image(len(images), val_fraction, seed)
    val = fixed_val_set([images[i] for i in va], spec)
    names = ", ".join(files[i].name for i in va) or "none"
    return ([images[i] for i in tr], None), val, f"{len(tr)} photos from {clean} with {spec} noise; validation: {names}"


def _check_sizes(named, patch: int, when: str = "") -> None:
    small = [f"  {n}: {a.shape[1]}x{a.shape[0]}" for n, a in named if min(a.shape[:2]) < patch]
    if small:
        raise InputError(f"{len(small)} image(s) are {when}smaller than the {patch}x{patch} patch "
                         f"(use a smaller --patch):\n" + "\n".join(small))


def _run_raw(clean: Path, out: Path, arch: str, args: dict, init_path: str, patch: int, batch: int, steps: int,
             lr: float, val_fraction: float, val_every: int | None, checkpoint_every: int, seed: int, threads: int,
             precision: str, resume: bool) -> None:
    """--domain raw: denoise_core.training.raw_train on the --clean photos, split by whole images."""
    from denoise_core.training.raw_train import RAW_LOSS, noise_description, noisy_psnr, train_raw, val_set

    files, images = _read_photos(clean, patch)
    tr, va = split_by_image(len(images), val_fraction, seed)
    val_pairs = val_set([images[i] for i in va])
    names = ", ".join(files[i].name for i in va) or "none"
    pixels = sum(images[i].shape[0] * images[i].shape[1] for i in tr)
    val_every = val_every or int(np.clip(pixels // (batch * patch * patch), 50, 1000))
    cfg = TrainConfig(arch=arch, arch_args=args, noise=noise_description(), patch=patch // 2, batch=batch,
                      steps=steps, lr=lr, loss=RAW_LOSS, seed=seed, val_every=val_every,
                      checkpoint_every=checkpoint_every, device="cpu",
                      data=f"{len(tr)} photos from {clean} unprocessed into sensor mosaics; validation: {names}",
                      threads=threads, init=init_path, precision=precision)
    amp = precision_name(pick_precision(torch.device("cpu"), precision))
    _say(f"training {arch} (raw domain){f' from {init_path}' if init_path else ''} on {cfg.data}; {steps} steps "
         f"of {batch} mosaics of {patch}x{patch} photosites with {cfg.noise}; device cpu, {amp}")
    if val_pairs:
        _say(f"validation: {len(val_pairs)} fixed crops, developed to sRGB; the noisy input scores "
             f"{noisy_psnr(val_pairs):.2f} dB PSNR")
    else:
        _say("note: only one image, so nothing is held out for validation; the last weights are kept")
    t0 = time.time()
    try:
        res = train_raw(cfg, out, images=[images[i] for i in tr], val_pairs=val_pairs, resume=resume,
                        card={"trained_with": "denoise-train --domain raw"}, log=_say)
    except TrainingError as e:
        raise TrainingFailed(str(e)) from None
    except KeyboardInterrupt:
        _interrupted(out)
    card = res["card"]
    curves, compare = report_paths(out)
    best = (f"best validation PSNR {card['val_psnr']:.2f} dB, SSIM {card['val_ssim']:.4f} at step {card['steps']}"
            if val_pairs else f"no validation, final loss {res['history'][-1]['loss']:.5f} ({RAW_LOSS})")
    _say(f"done in {time.time() - t0:.0f} s; {best}\nwrote {out}, {curves}" + (f", {compare}" if val_pairs else ""))
    _say(_state_note(out))


def _state_note(out: Path) -> str:
    """What the finished run's training state is for: nothing the weights need."""
    sp = state_path(out)
    size = f" ({sp.stat().st_size / 1e6:.1f} MB)" if sp.exists() else ""
    return (f"{sp}{size} is only needed to train this run further (the same command with --resume and a "
            f"larger --steps); {out} does not need it: delete it otherwise")


def _interrupted(out: Path) -> NoReturn:
    sp = state_path(out)
    _say(f"\ninterrupted; run the same command with --resume to continue from the state in {sp}"
         if sp.exists() else "\ninterrupted before the first state was saved; nothing to resume")
    sys.exit(130)


def _run(cfg: TrainConfig, out: Path, train_set, spec, val_pairs, resume: bool) -> None:
    from tqdm import tqdm

    clean_imgs, noisy_imgs = train_set
    # up to 16 px more than the patch: camera developments and filters never reach the patch's edge
    margin = max(0, min(16, min(min(a.shape[:2]) for a in clean_imgs) - cfg.patch))

    def batches(gen: torch.Generator):
        if noisy_imgs is not None:
            return random_patches(clean_imgs, cfg.batch, cfg.patch, gen, partners=noisy_imgs)
        clean = random_patches(clean_imgs, cfg.batch, cfg.patch + margin, gen)
        noisy, target = noisy_pair(clean, spec, gen, out_size=cfg.patch)
        if cfg.arch_args.get("level_input"):  # half the patches are told their true noise level
            return noisy, target, training_levels(noisy, target, gen)
        return noisy, target

    bar = None

    def report(p: Progress) -> None:
        nonlocal bar
        if bar is None:  # a live bar on a terminal; plain lines (every 5%) in a log
            bar = tqdm(total=p.steps, initial=p.step - 1, unit="step", dynamic_ncols=True, file=sys.stderr,
                       disable=None)
        bar.update(p.step - bar.n)
        status = f"loss {p.loss:.4f}" + (f" best {p.best_psnr:.2f} dB" if p.best_psnr else "")
        bar.set_postfix_str(status, refresh=False)
        if bar.disable and p.step % max(1, p.steps // 20) == 0:
            _say(f"step {p.step}/{p.steps} {status} eta {p.eta_s or 0:.0f} s")
        if p.val_psnr is not None and val_pairs:
            tqdm.write(f"step {p.step}: validation PSNR {p.val_psnr:.2f} dB, SSIM {p.val_ssim:.4f}", file=sys.stderr)

    t0 = time.time()
    try:
        res = train(cfg, out, batches=batches, val_pairs=val_pairs, resume=resume, on_progress=report,
                    card={"trained_with": "denoise-train"})
    except TrainingError as e:
        raise TrainingFailed(str(e)) from None
    except KeyboardInterrupt:
        _interrupted(out)
    finally:
        if bar is not None:
            bar.close()
    dt = time.time() - t0
    card = res["card"]
    if _is_main():
        curves, compare = report_paths(out)
        best = (f"best validation PSNR {card['val_psnr']:.2f} dB, SSIM {card['val_ssim']:.4f} at step {card['steps']}"
                if val_pairs else "no validation")
        _say(f"done in {dt:.0f} s; {best}\nwrote {out}, {curves}" + (f", {compare}" if val_pairs else ""))
        _say(_state_note(out))


if __name__ == "__main__":
    main(prog_name="denoise-train")
