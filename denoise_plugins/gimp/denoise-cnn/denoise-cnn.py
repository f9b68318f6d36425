#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Enhance > Denoise (CNN)...  (PDB procedure `plug-in-denoise-cnn`).

This module owns the procedure: its arguments (declared once, in `add_arguments`: they make the
PDB signature, the dialog and GIMP's saved last values), its dialog with the live preview
(`Preview`), and `run`, which reads the drawables, has them denoised and writes the result back
inside one undo group. The model is a `Gimp.Choice` of the shipped models (listed in
denoise_worker.json at install time) plus "Checkpoint file", which takes the file argument
`checkpoint`.

GIMP's Python has no torch, so the pixels go to the denoiser running in the user's own Python
(recorded at install time in denoise_worker.json beside this file) through the shared client
denoise_client.py, also copied here by `denoise-plugin install gimp`.

Pixels are read and written as sRGB-encoded float ("R'G'B'A float" / "Y'A float"), which babl
converts from and to every precision (u8, u16, half, float, linear or perceptual). Only the part of
the drawable inside the selection is changed; the model reads the context the worker reports around
it, on the model's grid (denoise_client.context_region), so a selection gets exactly the pixels that
denoising the whole layer gives there. Alpha is passed through unchanged by the worker. An error
changes nothing. One worker process per running GIMP (denoise_client.host_worker) serves every
drawable and every later run with the model loaded once, and ends with GIMP or after 10 idle minutes.
"""
import json
import os
import sys
import threading

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gtk", "3.0")
from gi.repository import Gegl, Gimp, GimpUi, GLib, GObject  # noqa: E402

PLUGIN_DIR = os.path.dirname(os.path.realpath(__file__))
if PLUGIN_DIR not in sys.path:  # the installer copies the shared client and the protocol next to this file
    sys.path.insert(0, PLUGIN_DIR)
import denoise_client  # noqa: E402  # pyright: ignore[reportMissingImports]
from denoise_protocol import (  # noqa: E402  # pyright: ignore[reportMissingImports]
    CONFIG_NAME, DEFAULT_TILE, MAX_NOISE_LEVEL, MAX_SIGMA)
from denoise_protocol import DEVICES as DEVICE_NAMES  # noqa: E402  # pyright: ignore[reportMissingImports]

PROC_NAME = "plug-in-denoise-cnn"
CHECKPOINT = "checkpoint"  # the model choice that takes the `checkpoint` file argument
DEVICE_TEXT = {"auto": ("Automatic", "CUDA, then Apple MPS, then the CPU"), "cpu": ("CPU", "The processor"),
               "cuda": ("CUDA", "An NVIDIA GPU"), "mps": ("Apple MPS", "An Apple silicon GPU")}
DEVICES = tuple((name, *DEVICE_TEXT[name]) for name in DEVICE_NAMES)  # the protocol's devices, labelled
# the dialog's controls, in order; "advanced" is a fold-out with ADVANCED in it
DIALOG = ["model", "checkpoint", "strength", "set-noise-level", "noise-level", "set-sigma", "sigma",
          "new-layer", "advanced"]
ADVANCED = ["device", "tile"]


def _(message):
    return message  # English only: no message catalogs


def read_settings(plugin_dir=PLUGIN_DIR):
    """Models and default for the argument declaration; never fails (the run reports problems)."""
    try:
        with open(os.path.join(plugin_dir, CONFIG_NAME), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = {}
    models = [m for m in cfg.get("models") or [] if isinstance(m, str)]
    default = cfg.get("default_model")
    return {"models": models, "default_model": default if isinstance(default, str) and default else "default"}


def model_entries(models, default_model="default"):
    """The model choice's (nick, label, help) entries: `default`, each shipped model, then the
    checkpoint file."""
    entries = [("default", "default" + (f" ({default_model})" if default_model != "default" else ""),
                _("The recommended shipped model"))]
    entries += [(m, m, _("A shipped model")) for m in models if m not in ("default", CHECKPOINT)]
    entries.append((CHECKPOINT, _("Checkpoint file"), _("The .safetensors checkpoint chosen as Checkpoint file")))
    return entries


def model_name(model, checkpoint_path):
    """What the worker gets as its model: the chosen shipped model, or the checkpoint's path."""
    if model != CHECKPOINT:
        return model or "default"
    if not checkpoint_path:
        raise denoise_client.WorkerError(_("Model is set to Checkpoint file: choose the checkpoint file."))
    return checkpoint_path


def pixel_format(is_gray, has_alpha):
    """(babl format, channels) sent to the worker: sRGB-encoded float, alpha kept when present."""
    if is_gray:
        return ("Y'A float", 2) if has_alpha else ("Y' float", 1)
    return ("R'G'B'A float", 4) if has_alpha else ("R'G'B' float", 3)


def noise_levels(set_level, level, set_sigma, sigma):
    """The worker's (noise_level, sigma): each None (automatic) unless its switch is on; an absolute
    sigma, when on, takes the place of the relative level."""
    if set_sigma:
        return None, float(sigma)
    return (float(level) if set_level else None), None


def make_choice(entries):
    choice = Gimp.Choice.new()
    for i, (nick, label, help_text) in enumerate(entries):
        choice.add(nick, i, label, help_text)
    return choice


def add_arguments(procedure, settings):
    """The one declaration of the arguments: the dialog, the saved last values and
    non-interactive PDB calls all come from it."""
    rw = GObject.ParamFlags.READWRITE
    procedure.add_double_argument("strength", _("S_trength"),
                                  _("How much of the denoised result to use (0 = none, 1 = all)"),
                                  0.0, 1.0, 1.0, rw)
    procedure.add_choice_argument("model", _("_Model"),
                                  _("A shipped model, or Checkpoint file for the file given as Checkpoint file"),
                                  make_choice(model_entries(settings["models"], settings["default_model"])),
                                  "default", rw)
    procedure.add_file_argument("checkpoint", _("Checkpoint _file"),
                                _("A .safetensors checkpoint (trained with denoise-train), used when "
                                  "Model is Checkpoint file"),
                                Gimp.FileChooserAction.OPEN, True, None, rw)
    # Noise level: a switch and a value rather than one number with a sentinel for "automatic",
    # so the dialog shows a plain check box and slider, and the value is kept in the saved
    # settings while automatic is on.
    procedure.add_boolean_argument("set-noise-level", _("Set _noise level"),
                                   _("Off: automatic (the model judges the noise, one pass). "
                                     "On: use Noise level; needs a model with a noise-level input"),
                                   False, rw)
    procedure.add_double_argument("noise-level", _("Noise le_vel"),
                                  _("How much noise to remove, relative to what the model finds "
                                    "by itself: 1 is about automatic, 2 also removes noise that "
                                    "automatic leaves, 0 keeps the image"),
                                  0.0, MAX_NOISE_LEVEL, 1.0, rw)
    procedure.add_boolean_argument("set-sigma", _("Set noise si_gma"),
                                   _("Off: automatic. On: use Noise sigma instead of the noise level; "
                                     "needs a model with a noise-level input"),
                                   False, rw)
    procedure.add_double_argument("sigma", _("Noise s_igma (0-255)"),
                                  _("The noise's standard deviation on the 0-255 scale, as FFDNet "
                                    "and G'MIC take it, the same over the whole image: mild camera "
                                    "noise is about 3-8, strong 15-50"),
                                  0.0, MAX_SIGMA, 6.0, rw)
    procedure.add_boolean_argument("new-layer", _("Result on a ne_w layer"),
                                   _("Put the result on a copy of each layer, above it, and keep "
                                     "the original (layers only: channels and masks change in place)"),
                                   False, rw)
    procedure.add_choice_argument("device", _("_Device"), _("Where the network runs"),
                                  make_choice(DEVICES), "auto", rw)
    procedure.add_int_argument("tile", _("Til_e size"),
                               _("Pixels per tile side: smaller tiles use less memory, larger ones "
                                 "are a little faster"),
                               64, 4096, DEFAULT_TILE, rw)


def job_settings(config):
    """The worker's job settings from the procedure's config (denoise_client.job_settings checks
    them); raises denoise_client.WorkerError with a message for the user."""
    checkpoint = config.get_property("checkpoint")
    level, sigma = noise_levels(config.get_property("set-noise-level"), config.get_property("noise-level"),
                                config.get_property("set-sigma"), config.get_property("sigma"))
    return denoise_client.job_settings(
        model=model_name(config.get_property("model"), checkpoint.get_path() if checkpoint is not None else None),
        strength=config.get_property("strength"), noise_level=level, sigma=sigma,
        device=config.get_property("device"), tile=config.get_property("tile"))


def host_worker(cfg):
    """This GIMP's worker. GIMP starts this script anew for every run; the worker (model loaded)
    stays up between runs, found through a socket named after GIMP's process, and ends with GIMP."""
    return denoise_client.host_worker("gimp", os.getppid(), cfg["python"], cfg.get("pythonpath"))


def failure(procedure, message):
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


class Preview:
    """The dialog's drawable preview (the part in view, at 1:1; its "Preview" check box is the
    before/after toggle), updated by itself after a setting changes or the view moves. The
    worker runs in a thread (GIMP calls stay on this one): first its info, then the view read
    with the model's context, so the preview is what OK gives there."""

    def __init__(self, widget, image, drawable, config):
        self.widget, self.image, self.drawable, self.config = widget, image, drawable, config
        self.thread = None
        self.pending = False
        self.closed = False
        self.stage = None
        self.view = None  # (x, y, w, h) being denoised or shown
        widget.connect("invalidated", self.start)
        config.connect("notify", lambda *a: widget.invalidate())

    def _in_thread(self, fn):
        box = {}

        def work():
            try:
                box["result"] = fn()
            except Exception as e:  # shown in the status, never raised in the thread
                box["error"] = e
        self.thread = (threading.Thread(target=work, daemon=True), box)
        self.thread[0].start()
        GLib.timeout_add(50, self.poll)

    def start(self, *_args):
        if self.closed:
            return
        if self.thread is not None:
            self.pending = True
            return
        self.pending = False
        try:
            cfg = denoise_client.load_config(PLUGIN_DIR)
            self.settings = job_settings(self.config)
        except denoise_client.WorkerError:
            return
        self.cfg, self.worker = cfg, host_worker(cfg)
        self.stage = "info"
        self._in_thread(lambda: self.worker.info(self.settings))

    def poll(self):
        assert self.thread is not None  # polled only while a request runs
        thread, box = self.thread
        if thread.is_alive():
            return True
        self.thread = None
        if self.closed:  # the dialog is gone; OK's run takes the worker after this
            return False
        if "error" in box or self.pending:
            if "error" in box:
                sys.stderr.write(f"denoise-cnn preview: {box['error']}\n")
            if self.pending:
                self.start()
            return False
        if self.stage == "info":
            self.read_and_run(box["result"])
        else:
            self.draw(box["result"])
        return False

    def read_and_run(self, info):
        d = self.drawable
        x, y = self.widget.get_position()
        w, h = self.widget.get_size()
        w, h = min(w, d.get_width() - x), min(h, d.get_height() - y)
        if w < 1 or h < 1:
            return
        fmt, channels = pixel_format(d.is_gray(), d.has_alpha())
        rx, ry, rw, rh = denoise_client.context_region(x, y, w, h, d.get_width(), d.get_height(),
                                                       info["context"], info["multiple"])
        buf = d.get_buffer()
        pixels = bytes(buf.get(Gegl.Rectangle.new(rx, ry, rw, rh), 1.0, fmt, Gegl.AbyssPolicy.CLAMP))
        del buf
        mask = None
        if not Gimp.Selection.is_empty(self.image):  # blend through the selection, as OK does
            ok, ox, oy = d.get_offsets()
            sel = self.image.get_selection().get_buffer()
            mask = bytes(sel.get(Gegl.Rectangle.new(x + ox, y + oy, w, h), 1.0, "Y u8", Gegl.AbyssPolicy.NONE))
            del sel
        self.view = (x, y, w, h)
        self.stage = "run"
        self._in_thread(lambda: denoise_client.run_denoise(
            pixels, rw, rh, channels, python=self.cfg["python"], worker=self.worker, transfer="srgb",
            **self.settings, crop=(x - rx, y - ry, w, h), mask=mask, rgba8=True))

    def draw(self, result):
        """Show a finished preview: `result` is the worker's answer for `self.view`."""
        assert self.view is not None  # set before the run that gives a result
        x, y, w, h = self.view
        rgba = result["rgba8"]
        d = self.drawable
        keep = [0, 1, 2, 3] if not d.is_gray() else [0, 3]
        if not d.has_alpha():
            keep = keep[:-1]
        if keep != [0, 1, 2, 3]:
            out = bytearray(w * h * len(keep))
            for i, k in enumerate(keep):
                out[i::len(keep)] = rgba[k::4]
            rgba = bytes(out)
        self.widget.draw_buffer(rgba, w * len(keep))


def show_dialog(procedure, image, drawables, config):
    """The procedure dialog, made from the declared arguments; True when OK was pressed."""
    GimpUi.init("denoise-cnn")
    dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title=_("Denoise (CNN)"))
    dialog.get_spin_scale("strength", 1.0)  # a slider rather than a bare spin button
    dialog.get_spin_scale("noise-level", 1.0)
    # the level slider only counts (and is only editable) when "Set noise level" is on
    dialog.set_sensitive("noise-level", True, config, "set-noise-level", False)
    dialog.get_spin_scale("sigma", 1.0)
    dialog.set_sensitive("sigma", True, config, "set-sigma", False)
    dialog.fill_box("advanced-box", ADVANCED)
    dialog.get_label("advanced-label", _("Advanced"), False, False)
    dialog.fill_expander("advanced", "advanced-label", False, "advanced-box")
    names = list(DIALOG)
    preview = None
    if drawables:
        widget = dialog.get_drawable_preview("preview", drawables[0])
        preview = Preview(widget, image, drawables[0], config)
        names.insert(0, "preview")
    dialog.fill(names)
    # the file only counts (and is only editable) when the model is "Checkpoint file"; after
    # fill(), which makes the widget: this applies to widgets that exist
    dialog.set_sensitive_if_in("checkpoint", config, "model",
                               Gimp.ValueArray.new_from_values([GObject.Value(GObject.TYPE_STRING, CHECKPOINT)]),
                               True)
    ok = dialog.run()
    if preview is not None:
        preview.closed = True
    dialog.destroy()
    return ok


def run(procedure, run_mode, image, drawables, config, data):
    if run_mode == Gimp.RunMode.INTERACTIVE and not show_dialog(procedure, image, drawables, config):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    if not drawables:
        return failure(procedure, _("Denoise (CNN) needs a layer or channel to work on."))
    try:
        cfg = denoise_client.load_config(PLUGIN_DIR)
        settings = job_settings(config)
    except denoise_client.WorkerError as e:
        return failure(procedure, str(e))
    worker = host_worker(cfg)

    # Read and denoise every drawable first, write only when all succeeded: an error
    # (missing model, worker crash) leaves the image exactly as it was.
    jobs = []
    for drawable in drawables:
        if drawable.is_indexed():
            return failure(procedure, _("Denoise (CNN) works on RGB and grayscale images; "
                                        "convert indexed images with Image > Mode first."))
        if drawable.is_group_layer():
            return failure(procedure, _("Denoise (CNN) works on pixel layers and channels, "
                                        "not on layer groups: select the layers inside."))
        intersects, x, y, w, h = drawable.mask_intersect()
        if intersects and w > 0 and h > 0:
            jobs.append((drawable, (x, y, w, h)))
    if not jobs:
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())

    Gimp.progress_init(_("Denoising (CNN)"))
    results = []
    try:
        info = worker.info(settings)  # loads the model; says how much context it reads
        for i, (drawable, (x, y, w, h)) in enumerate(jobs):
            fmt, channels = pixel_format(drawable.is_gray(), drawable.has_alpha())
            rx, ry, rw, rh = denoise_client.context_region(x, y, w, h, drawable.get_width(),
                                                           drawable.get_height(), info["context"],
                                                           info["multiple"])
            buf = drawable.get_buffer()
            pixels = buf.get(Gegl.Rectangle.new(rx, ry, rw, rh), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)
            del buf
            out = denoise_client.run_denoise(
                bytes(pixels), rw, rh, channels, python=cfg["python"], worker=worker, transfer="srgb",
                **settings, on_progress=lambda f, i=i: Gimp.progress_update((i + min(f, 1.0)) / len(jobs)))
            results.append((drawable, (x, y, w, h), fmt,
                            denoise_client.crop_rows(out, rw, rh, channels, x - rx, y - ry, w, h)))
    except denoise_client.WorkerError as e:
        return failure(procedure, _("Denoise (CNN) failed: ") + str(e))
    finally:
        Gimp.progress_end()

    new_layer = bool(config.get_property("new-layer"))
    image.undo_group_start()  # one undo step, whether in place or on new layers
    try:
        for drawable, (x, y, w, h), fmt, pixels in results:
            if new_layer and drawable.is_layer():
                # a copy of the layer above it takes the result; the original stays as it was
                copy = drawable.copy()
                copy.set_name(drawable.get_name() + " (denoised)")
                image.insert_layer(copy, drawable.get_parent(), image.get_item_position(drawable))
                drawable = copy
            shadow = drawable.get_shadow_buffer()
            shadow.set(Gegl.Rectangle.new(x, y, w, h), fmt, pixels)
            shadow.flush()
            del shadow
            drawable.merge_shadow(True)  # blended through the selection mask
            drawable.update(x, y, w, h)
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


class DenoiseCNN(Gimp.PlugIn):
    def do_set_i18n(self, procname):
        return False, None, None  # English only: no message catalogs to look for

    def do_query_procedures(self):
        return [PROC_NAME]

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE
                                       | Gimp.ProcedureSensitivityMask.DRAWABLES)
        procedure.set_menu_label(_("Denoise (CNN)…"))
        procedure.add_menu_path("<Image>/Filters/Enhance")
        procedure.set_documentation(
            _("Remove photo noise with a neural network"),
            _("Denoises the selected layers (inside the selection, if any) with a convolutional "
              "network running in the Python environment recorded by `denoise-plugin install gimp`. "
              "Alpha is kept."),
            name)
        procedure.set_attribution("denoise-cnn authors", "denoise-cnn authors, GPL-3.0-or-later", "2025")
        add_arguments(procedure, read_settings())
        return procedure


if __name__ == "__main__":
    Gimp.main(DenoiseCNN.__gtype__, sys.argv)
