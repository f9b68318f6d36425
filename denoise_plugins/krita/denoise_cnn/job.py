"""What "Denoise (CNN)…" does: read the active paint layer, run the worker off the UI thread with
progress and Cancel, write the result back (inside the selection only) so that Undo restores it
(see DenoiseJob.apply: Krita 5.1 gives no single undoable pixel write to Python).

Krita's Python has no torch: the denoiser runs in the user's Python (recorded at install in
denoise_worker.json) through the shared client `denoise_client.py` (copied here by the installer),
as one persistent worker process for this Krita (denoise_client.shared_worker), which keeps the
model loaded between previews and jobs. A job first asks it how much context the model reads
(its "info"), then sends the selection grown by that context (denoise_client.context_region), so a
selection gets exactly the pixels that denoising the whole layer gives there.
Worker calls run in a Python thread that touches no Qt object (Task); a QTimer on the UI thread
polls it, so Krita stays responsive and every Krita/Qt call happens on the UI thread.
"""
from __future__ import annotations

import os
import threading

from . import pixels

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
TITLE = "Denoise (CNN)"
POLL_MS = 50

_ACTIVE = []  # running jobs, kept alive until they finish


class JobError(Exception):
    """Why the plugin cannot run on this layer or document; shown to the user as is."""


_CLIENT = []


def client():
    """The shared client module (loaded once: it holds this Krita's persistent worker)."""
    if _CLIENT:
        return _CLIENT[0]
    try:
        from . import denoise_client  # pyright: ignore[reportAttributeAccessIssue]  # the installer's copy
    except ImportError:  # a source checkout: the installer normally copies it next to this file
        import importlib.util
        path = os.path.join(PLUGIN_DIR, os.pardir, os.pardir, "common", "denoise_client.py")
        spec = importlib.util.spec_from_file_location("denoise_cnn_client", os.path.abspath(path))
        assert spec is not None and spec.loader is not None, path
        denoise_client = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(denoise_client)
    _CLIENT.append(denoise_client)
    return denoise_client


def worker(cfg: dict):
    """This Krita's persistent worker for the recorded interpreter."""
    return client().shared_worker(cfg["python"], cfg.get("pythonpath"))


def load_config() -> dict:
    """The recorded worker; raises JobError with the reinstall hint when it is missing."""
    c = client()
    try:
        return c.load_config(PLUGIN_DIR)
    except c.WorkerError as e:
        raise JobError(str(e)) from None


class Target:
    """The pixels one run works on: a rectangle of `node` (the selection's bounds when there is a
    selection, else the whole frame) with its selection mask. The frame is the layer's content
    within the canvas: what "the whole layer" means, and how far context may be read."""

    def __init__(self, doc, node, x, y, w, h, mask, original, frame=None):
        self.doc, self.node = doc, node
        self.x, self.y, self.w, self.h = x, y, w, h
        self.frame = frame or (x, y, w, h)
        self.mask = mask  # bytes, one per pixel (0..255), or None: everything
        self.original = original  # Krita's native pixel bytes of the rectangle
        self.color_model = node.colorModel()
        self.depth = node.colorDepth()
        self.profile = node.colorProfile()
        self.linear = pixels.is_linear_profile(self.profile)
        self.channels = pixels.channels_of(self.color_model)
        self.bpp = pixels.bytes_per_pixel(self.color_model, self.depth)

    @property
    def transfer(self) -> str:
        return "linear" if self.linear else "srgb"

    def context_rect(self, info: dict, rect=None):
        """Where to read for `rect` (default: the target's), in document pixels: grown by the
        worker's context, on the model's grid relative to the frame, within the frame."""
        fx, fy, fw, fh = self.frame
        x, y, w, h = rect or (self.x, self.y, self.w, self.h)
        rx, ry, rw, rh = client().context_region(x - fx, y - fy, w, h, fw, fh, int(info["context"]),
                                                 int(info.get("multiple", 1)))
        return rx + fx, ry + fy, rw, rh

    def read(self, x: int, y: int, w: int, h: int) -> bytes:
        """The layer's native pixel bytes of a document rectangle (UI thread only)."""
        raw = bytes(self.node.pixelData(x, y, w, h))
        if len(raw) != w * h * self.bpp:
            raise JobError("internal error: unexpected pixel data size from Krita")
        return raw

    def mask_of(self, x: int, y: int, w: int, h: int):
        """The selection mask of a document rectangle inside the target (None: all selected)."""
        if self.mask is None:
            return None
        return pixels.crop(self.mask, self.w, self.h, 1, x - self.x, y - self.y, w, h)


def prepare(doc, node) -> Target:
    """Check the document and layer and read the pixels to work on; JobError says what is wrong."""
    if doc is None:
        raise JobError("Open an image first.")
    if node is None:
        raise JobError("Select a paint layer first.")
    kind = node.type()
    if kind != "paintlayer":
        names = {"grouplayer": "a group layer", "vectorlayer": "a vector layer",
                 "filelayer": "a file layer", "filterlayer": "a filter layer",
                 "filllayer": "a fill layer", "clonelayer": "a clone layer"}
        what = names.get(kind, f"a {kind.replace('mask', ' mask')}" if kind else "not a paint layer")
        raise JobError(f'Denoise (CNN) works on paint layers; the active layer "{node.name()}" is {what}. '
                       f"Select a paint layer, or convert this one (Layer › Convert › to Paint Layer).")
    try:
        pixels.check_format(node.colorModel(), node.colorDepth())
    except pixels.UnsupportedFormat as e:
        raise JobError(str(e)) from None
    if node.locked():
        raise JobError(f'The layer "{node.name()}" is locked; unlock it to denoise it.')
    cw, ch = doc.width(), doc.height()
    b = node.bounds()
    fx0, fy0 = max(b.x(), 0), max(b.y(), 0)
    fx1, fy1 = min(b.x() + b.width(), cw), min(b.y() + b.height(), ch)
    sel = doc.selection()
    if sel is not None and sel.width() > 0 and sel.height() > 0:
        x0, y0, x1, y1 = sel.x(), sel.y(), sel.x() + sel.width(), sel.y() + sel.height()
    else:
        sel = None
        x0, y0, x1, y1 = fx0, fy0, fx1, fy1
    x0, y0, x1, y1 = max(x0, fx0), max(y0, fy0), min(x1, fx1), min(y1, fy1)
    if x1 <= x0 or y1 <= y0:
        raise JobError("Nothing to denoise: the layer is empty here" +
                       (" or the selection lies outside the canvas." if sel is not None else "."))
    w, h = x1 - x0, y1 - y0
    mask = None
    if sel is not None:
        mask = bytes(sel.pixelData(x0, y0, w, h))
        if len(mask) != w * h:
            raise JobError("internal error: unexpected selection mask size")
        if not any(mask):
            raise JobError("Nothing to denoise: the selection is empty.")
        if mask.count(255) == len(mask):
            mask = None  # a fully selected rectangle: no blending needed
    original = bytes(node.pixelData(x0, y0, w, h))
    target = Target(doc, node, x0, y0, w, h, mask, original, (fx0, fy0, fx1 - fx0, fy1 - fy0))
    if len(original) != w * h * target.bpp:
        raise JobError("internal error: unexpected pixel data size from Krita")
    return target


class Task:
    """`fn(on_progress, is_cancelled)` in a Python thread that touches no Qt object; the UI thread
    polls `done`, `progress`, `result`, `error`, `cancelled`."""

    def __init__(self, fn):
        self.fn = fn
        self.progress = 0.0
        self.result = None
        self.error = None
        self.cancelled = False
        self.done = False
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="denoise-cnn", daemon=True)

    def start(self) -> Task:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def _progress(self, fraction: float) -> None:
        self.progress = max(0.0, min(1.0, float(fraction)))

    def _run(self) -> None:
        c = client()
        try:
            self.result = self.fn(self._progress, self._cancel.is_set)
        except c.Cancelled:
            self.cancelled = True
        except (c.WorkerError, JobError) as e:
            self.error = str(e)
        except Exception as e:  # never let a thread die silently
            self.error = f"{type(e).__name__}: {e}"
        finally:
            if self._cancel.is_set() and self.result is None and not self.error:
                self.cancelled = True
            self.done = True


def NativeRun(target: Target, raw: bytes, region, rect, cfg: dict, settings: dict, rgba8: bool) -> Task:
    """Denoise the layer's native bytes of `region` on this Krita's worker, which converts them,
    crops `rect`, blends it through the selection and returns native bytes ready for
    setPixelData (and, with `rgba8`, 8-bit pictures for the preview): Krita's Python may have no
    numpy, and per-pixel work in pure Python takes seconds."""
    c = client()
    s = c.job_settings(settings)
    w = worker(cfg)
    rx, ry, rw, rh = region
    x, y, cw, ch = rect
    dtype = {"U8": "u8", "U16": "u16", "F16": "f16", "F32": "f32"}[target.depth]
    mask = target.mask_of(*rect)
    return Task(lambda on_progress, is_cancelled: c.run_denoise(
        raw, rw, rh, target.channels, python=cfg["python"], worker=w, transfer=target.transfer, **s,
        dtype=dtype, swap_rb=pixels.swaps_rb(target.color_model, target.depth), crop=(x - rx, y - ry, cw, ch),
        mask=mask, rgba8=rgba8, on_progress=on_progress, is_cancelled=is_cancelled))


def InfoRun(cfg: dict, settings: dict) -> Task:
    """The worker's info for these settings (loads the model the first time)."""
    w = worker(cfg)
    return Task(lambda on_progress, is_cancelled: w.info(settings, is_cancelled=is_cancelled))


class RegionRun:
    """Denoise document rectangle `rect` of a Target with the model's full context around it, so the
    result equals what denoising the whole layer gives there: asks the worker for its context
    (thread), reads the grown region (UI thread, in `poll`), denoises it (thread). Call `poll()`
    from a UI timer until `done`; then `result` (native bytes of `rect`, blended through the
    selection: what setPixelData takes), `error` or `cancelled`; with `preview`, `rgba8` and
    `rgba8_before` (8-bit R,G,B,A of the result and the original, for display)."""

    def __init__(self, target: Target, rect, cfg: dict, settings: dict, preview: bool = False):
        self.target, self.rect, self.cfg, self.settings = target, tuple(rect), cfg, settings
        self.preview = preview
        self.rgba8 = self.rgba8_before = None
        self.region = None  # what was sent, once the worker said its context
        self.result = self.error = None
        self.cancelled = self.done = False
        self.user_cancelled = False
        self.task = None

    def start(self) -> RegionRun:
        self.task = InfoRun(self.cfg, self.settings).start()
        return self

    @property
    def progress(self) -> float:
        return self.task.progress if self.region is not None else 0.0

    def cancel(self) -> None:
        self.user_cancelled = True
        if self.task is not None:
            self.task.cancel()

    def poll(self) -> bool:
        task = self.task
        if self.done or not task.done:
            return self.done
        if not self.user_cancelled and self.region is None and task.result is not None:
            t = self.target
            try:  # phase 2: read the rectangle with the context the worker asked for
                self.region = t.context_rect(task.result, self.rect)
                self.task = NativeRun(t, t.read(*self.region), self.region, self.rect, self.cfg,
                                      self.settings, self.preview).start()
                return False
            except Exception as e:
                task.error = f"{type(e).__name__}: {e}"
        self.done = True
        if self.user_cancelled or task.cancelled:
            self.cancelled = True  # a result that came in as Cancel was clicked is not used
        elif task.error:
            self.error = task.error
        elif self.preview:
            self.result, self.rgba8, self.rgba8_before = (task.result["pixels"], task.result["rgba8"],
                                                          task.result["rgba8_before"])
        else:
            self.result = task.result
        return True


def show_message(parent, text: str, icon: str = "warning"):
    """A window-modal message box that does not block the caller (kept alive by its parent)."""
    from PyQt5.QtWidgets import QMessageBox

    icons = {"warning": QMessageBox.Warning, "info": QMessageBox.Information,
             "error": QMessageBox.Critical}
    box = QMessageBox(icons.get(icon, QMessageBox.Warning), TITLE, text, QMessageBox.Ok, parent)
    box.setObjectName("denoise_cnn_message")
    box.setAttribute(0x37, True)  # Qt.WA_DeleteOnClose
    box.open()
    return box


class DenoiseJob:
    """Runs the worker on a Target with a QProgressDialog (Cancel works) and applies the result.
    `state` is "running", then "done", "cancelled" or "error"; `message` says what the user was told."""

    def __init__(self, target: Target, settings: dict, cfg: dict, parent=None):
        self.target, self.settings, self.cfg, self.parent = target, settings, cfg, parent
        self.run = None
        self.state, self.message = "running", ""

    def start(self) -> None:
        from PyQt5.QtCore import Qt, QTimer
        from PyQt5.QtWidgets import QProgressDialog

        t = self.target
        self.run = RegionRun(t, (t.x, t.y, t.w, t.h), self.cfg, self.settings).start()
        self.progress = QProgressDialog(f'Denoising "{t.node.name()}" ({t.w}×{t.h})…', "Cancel", 0, 1000,
                                        self.parent)
        self.progress.setObjectName("denoise_cnn_progress")
        self.progress.setWindowTitle(TITLE)
        self.progress.setWindowModality(Qt.WindowModal)
        self.progress.setAutoClose(False)
        self.progress.setAutoReset(False)
        self.progress.setMinimumDuration(0)
        self.progress.setValue(0)
        self.progress.canceled.connect(self.cancel)
        self.progress.show()
        self.timer = QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self._poll)
        self.timer.start()
        _ACTIVE.append(self)

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()
            self.progress.setLabelText("Cancelling…")

    def _poll(self) -> None:
        run = self.run
        if self.progress.wasCanceled() and not run.user_cancelled:
            run.cancel()
        if not run.poll():
            self.progress.setValue(int(run.progress * 1000))
            return
        self.timer.stop()
        self.progress.hide()
        self.progress.deleteLater()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if run.cancelled:
            self._finish("cancelled", "Denoising was cancelled; the layer is unchanged.", "info")
        elif run.error:
            self._finish("error", f"Denoising failed: {run.error}\n\nThe layer is unchanged.", "error")
        else:
            try:
                assert run.result is not None  # neither cancelled nor failed
                self.apply(run.result)
            except Exception as e:
                self._finish("error", f"Could not write the result back: {e}\n\nThe layer is unchanged.",
                             "error")
                return
            self.state = "done"

    def _finish(self, state: str, message: str, icon: str) -> None:
        self.box = show_message(self.parent, message, icon)
        self.state, self.message = state, message

    def apply(self, denoised: bytes) -> None:
        """Write the result back so that Undo restores the layer.

        Krita 5.1's `Node.setPixelData` bypasses the undo stack, and its scripting API has no other
        pixel write and no undo macro, so the pixels go into a duplicate of the layer (same
        properties and masks), added above the original through the API's undoable command:
        - "new_layer" (non-destructive): the duplicate, named "NAME (denoised)", stays above the
          untouched original; one undo entry (add) removes it.
        - in place: the original is then removed (a second undoable command), so the duplicate,
          with the original's name, takes its place. Two undo entries (add, remove); undoing both
          gives back the original layer object untouched. The layer is a new node: clone layers
          of the original keep showing the original's pixels."""
        from PyQt5.QtCore import QByteArray

        t = self.target
        data = denoised  # native bytes of the target, blended through the selection by the worker
        node = t.node
        parent = node.parentNode()
        if parent is None:
            raise RuntimeError("the layer is no longer in the image")
        new_layer = bool(self.settings.get("new_layer"))
        dup = node.duplicate()
        dup.setName(f"{node.name()} (denoised)" if new_layer else node.name())
        if dup.setPixelData(QByteArray(data), t.x, t.y, t.w, t.h) is False:
            raise RuntimeError("Krita refused the pixel data")
        if not parent.addChildNode(dup, node):
            raise RuntimeError("Krita could not add the result layer")
        t.doc.waitForDone()
        if not new_layer:
            node.remove()
            t.doc.waitForDone()
        t.doc.setActiveNode(dup)
        t.doc.refreshProjection()
        self.result_node = dup


def run_interactive() -> None:
    """The action: check the layer, ask in the dialog, run with progress. Never raises."""
    from krita import Krita

    app = Krita.instance()
    win = app.activeWindow()
    parent = win.qwindow() if win is not None else None
    try:
        target = prepare(app.activeDocument(), app.activeDocument().activeNode()
                         if app.activeDocument() is not None else None)
        cfg = load_config()
    except JobError as e:
        show_message(parent, str(e))
        return
    except Exception as e:
        show_message(parent, f"Unexpected error: {type(e).__name__}: {e}", "error")
        return
    from .dialog import DenoiseDialog

    dlg = DenoiseDialog(target, cfg, parent)
    accepted = dlg.exec_() == dlg.Accepted
    settings = dlg.settings()
    dlg.deleteLater()
    if not accepted:
        return
    DenoiseJob(target, settings, cfg, parent).start()
