#!/usr/bin/env python3
"""Test-only GIMP 3 plug-in that drives the Denoise (CNN) dialog as a user would, for
tests/test_gimp_e2e.py (never installed for users).

tests/test_gimp_e2e.py installs it beside the real plug-in as
`plug-ins/denoise-cnn-preview-test/denoise-cnn-preview-test.py`. It imports the real plug-in module
from `../denoise-cnn/denoise-cnn.py` and registers `test-denoise-cnn-preview`: the real procedure
(the same declared arguments, dialog, preview and run) plus one argument, `record-to`. Its
preview is the real `Preview` with `draw` extended: after each preview it writes what the preview
showed to RECORD.N.rgba8 and a JSON line to RECORD (with which controls are editable); after the
first it picks "Checkpoint file" as the model and back (noting whether the file chooser followed),
then sets the strength to 0.7 (a setting change: the preview must update by itself); after the
second it saves a picture of the dialog (RECORD.dialog.png) and presses OK.
"""
import importlib.util
import json
import os
import sys
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gdk", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gdk, Gimp, GLib, GObject, Gtk  # noqa: E402

HERE = os.path.dirname(os.path.realpath(__file__))
REAL = os.path.join(os.path.dirname(HERE), "denoise-cnn", "denoise-cnn.py")
PROC_NAME = "test-denoise-cnn-preview"

_spec = importlib.util.spec_from_file_location("denoise_cnn_plugin", REAL)
assert _spec is not None and _spec.loader is not None, REAL
real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real)


class RecordingPreview(real.Preview):
    """The real preview, recording each picture it shows and then acting as the user."""

    def __init__(self, widget, image, drawable, config):
        super().__init__(widget, image, drawable, config)
        self.record_to = config.get_property("record-to")
        self.shown = 0
        self.t0 = time.monotonic()

    def start(self, *args):
        if self.thread is None and not self.closed:
            self.t0 = time.monotonic()  # a new request: time it to its picture
        super().start(*args)

    def draw(self, result):
        super().draw(result)
        self.shown += 1
        assert self.view is not None
        with open(f"{self.record_to}.{self.shown}.rgba8", "wb") as f:
            f.write(result["rgba8"])
        dialog = self.widget.get_toplevel()
        line = {"view": list(self.view), "pid": self.worker.pid, "seconds": time.monotonic() - self.t0,
                "strength": self.settings["strength"],
                "sensitive": {name: dialog.get_widget(name, GObject.TYPE_NONE).is_sensitive()
                              for name in ("checkpoint", "noise-level", "sigma")}}
        if self.shown == 1:
            # the file chooser follows the model choice; then back, and a new strength
            self.config.set_property("model", real.CHECKPOINT)
            line["checkpoint_chosen_sensitive"] = dialog.get_widget("checkpoint", GObject.TYPE_NONE).is_sensitive()
            self.config.set_property("model", "default")
            self.config.set_property("strength", 0.7)
        with open(self.record_to, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if self.shown > 1:
            GLib.timeout_add(300, self.press_ok)

    def press_ok(self):
        dialog = self.widget.get_toplevel()
        win = dialog.get_window()  # a picture of the dialog for the docs, then OK
        shot = Gdk.pixbuf_get_from_window(win, 0, 0, win.get_width(), win.get_height())
        if shot is not None:
            shot.savev(self.record_to + ".dialog.png", "png", [], [])
        dialog.response(Gtk.ResponseType.OK)
        return False


setattr(real, "Preview", RecordingPreview)  # the real dialog now makes this preview


class DenoiseCNNPreviewTest(real.DenoiseCNN):
    def do_query_procedures(self):
        return [PROC_NAME]

    def do_create_procedure(self, name):
        procedure = super().do_create_procedure(name)
        procedure.add_string_argument("record-to", "Record to", "Where the previews are recorded", "",
                                      GObject.ParamFlags.READWRITE)
        return procedure


if __name__ == "__main__":
    Gimp.main(DenoiseCNNPreviewTest.__gtype__, sys.argv)
