#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Enhance > Denoise (CNN)...  (PDB procedure `plug-in-denoise-cnn`).

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

The helpers above `main()` use only the standard library, so they can be tested without GIMP.
"""
import json
import os
import sys

PROC_NAME = "plug-in-denoise-cnn"
PLUGIN_DIR = os.path.dirname(os.path.realpath(__file__))
CONFIG_NAME = "denoise_worker.json"
MAX_NOISE_LEVEL = 4.0  # denoise_core.api.MAX_NOISE_LEVEL (no torch here, so not imported)


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


def model_blurb(models, default_model="default"):
    names = [m for m in models if m != "default"]
    shipped = ", ".join(["default" + (f" (= {default_model})" if default_model != "default" else "")] + names)
    return f"Shipped model: {shipped}; or the path of a .safetensors checkpoint"


def pixel_format(is_gray, has_alpha):
    """(babl format, channels) sent to the worker: sRGB-encoded float, alpha kept when present."""
    if is_gray:
        return ("Y'A float", 2) if has_alpha else ("Y' float", 1)
    return ("R'G'B'A float", 4) if has_alpha else ("R'G'B' float", 3)


def noise_level(set_level, level):
    """The worker's noise_level: None (automatic) unless "Set noise level" is on."""
    return float(level) if set_level else None


def main():
    import gi
    gi.require_version("Gimp", "3.0")
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gegl", "0.4")
    from gi.repository import Gegl, Gimp, GimpUi, GLib, GObject

    sys.path.insert(0, PLUGIN_DIR)
    import denoise_client

    def _(message):
        return message

    def failure(procedure, message):
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))

    def run(procedure, run_mode, image, drawables, config, data):
        if run_mode == Gimp.RunMode.INTERACTIVE:
            GimpUi.init("denoise-cnn")
            dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title=_("Denoise (CNN)"))
            dialog.get_spin_scale("strength", 1.0)  # a slider rather than a bare spin button
            dialog.get_spin_scale("noise-level", 1.0)
            # the level slider only counts (and is only editable) when "Set noise level" is on
            dialog.set_sensitive("noise-level", True, config, "set-noise-level", False)
            dialog.fill(None)
            ok = dialog.run()
            dialog.destroy()
            if not ok:
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

        if not drawables:
            return failure(procedure, _("Denoise (CNN) needs a layer or channel to work on."))
        try:
            cfg = denoise_client.load_config(PLUGIN_DIR)
            settings = denoise_client.job_settings(
                model=config.get_property("model"), strength=config.get_property("strength"),
                noise_level=noise_level(config.get_property("set-noise-level"), config.get_property("noise-level")),
                device=cfg.get("device", "auto"), tile=cfg.get("tile", 1024))
        except denoise_client.WorkerError as e:
            return failure(procedure, str(e))
        # GIMP starts this script anew for every run; the worker (model loaded) stays up between
        # runs, found through a socket named after GIMP's process, and ends with GIMP
        worker = denoise_client.host_worker("gimp", os.getppid(), cfg["python"], cfg.get("pythonpath"))

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
                drawable.merge_shadow(True)  # one undo step, blended through the selection mask
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
            settings = read_settings()
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
            # The one declaration of the arguments: the dialog, the saved last values and
            # non-interactive PDB calls all come from it.
            procedure.add_double_argument("strength", _("S_trength"),
                                          _("How much of the denoised result to use (0 = none, 1 = all)"),
                                          0.0, 1.0, 1.0, GObject.ParamFlags.READWRITE)
            procedure.add_string_argument("model", _("_Model"),
                                          model_blurb(settings["models"], settings["default_model"]),
                                          "default", GObject.ParamFlags.READWRITE)
            # Noise level: a switch and a value rather than one number with a sentinel for
            # "automatic", so the dialog shows a plain check box and slider, and the value is kept
            # in the saved settings while automatic is on.
            procedure.add_boolean_argument("set-noise-level", _("Set _noise level"),
                                           _("Off: automatic (the model judges the noise, one pass). "
                                             "On: use Noise level; needs a model with a noise-level input"),
                                           False, GObject.ParamFlags.READWRITE)
            procedure.add_double_argument("noise-level", _("Noise le_vel"),
                                          _("How much noise to remove, relative to what the model finds "
                                            "by itself: 1 is about automatic, 2 also removes noise that "
                                            "automatic leaves, 0 keeps the image"),
                                          0.0, MAX_NOISE_LEVEL, 1.0, GObject.ParamFlags.READWRITE)
            procedure.add_boolean_argument("new-layer", _("Result on a ne_w layer"),
                                           _("Put the result on a copy of each layer, above it, and keep "
                                             "the original (layers only: channels and masks change in place)"),
                                           False, GObject.ParamFlags.READWRITE)
            return procedure

    Gimp.main(DenoiseCNN.__gtype__, sys.argv)


if __name__ == "__main__":
    main()
