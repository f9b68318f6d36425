"""The modal "Denoise (CNN)" dialog: model, strength, noise level, new layer, advanced (device, tile
size), and a live 1:1 preview.

Preview: a box of at most 512x512 layer pixels (drag it on the overview) shown at 1:1 with a
before/after split (drag the divider). It updates by itself PREVIEW_DELAY_MS after a control
changes, on this Krita's persistent worker (job.RegionRun: the box read with the model's full
context, so the preview is exactly what OK will give there). A change while one runs queues one
more; none is killed, so the worker keeps its model.

Noise level: unchecked is automatic (the model judges the noise, one pass); checked sends a value
0..4 (1 about automatic, 2 removes noise automatic leaves, 0 keeps the image; denoise_core/inference/levels.py).
Noise sigma: the noise as an absolute standard deviation on the 0-255 scale (one pass). Setting one
of the two clears the other.

The preview runs the worker on a centred crop of at most 256x256 pixels in a background thread
(job.RegionRun), polled by a QTimer, so the dialog stays responsive.
"""
from __future__ import annotations

import time

from PyQt5.QtCore import QRect, Qt, QTimer
from PyQt5.QtGui import QColor, QImage, QPainter, QPen, QPixmap
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog,
                             QFormLayout, QHBoxLayout, QLabel, QSlider,
                             QSpinBox, QToolButton, QVBoxLayout, QWidget)

from . import job, pixels

try:  # the installer copies denoise_protocol.py into this package
    from .denoise_protocol import (  # pyright: ignore[reportMissingImports]
        DEFAULT_TILE, DEVICES, MAX_NOISE_LEVEL, MAX_SIGMA)
except ImportError:  # a source checkout: denoise_plugins/common on sys.path
    from denoise_protocol import DEFAULT_TILE, DEVICES, MAX_NOISE_LEVEL, MAX_SIGMA

CHECKPOINT_ITEM = "Checkpoint file…"
PREVIEW = 512  # the preview box's largest side, in layer pixels (shown 1:1)
OVERVIEW = 200  # the overview's largest side, in screen pixels
PREVIEW_DELAY_MS = 250  # after the last control change, before the preview updates
SIGMA_SLIDER = 40.0  # the slider's top; the box takes up to MAX_SIGMA
LEVEL_TIP = ("Off: automatic, the model judges the noise (one pass). On: tell it how much to remove, "
             "relative to what it finds by itself: 1 is about automatic, 2 also removes noise that "
             "automatic leaves, 0 keeps the image. Needs a model with a noise-level input.")
SIGMA_TIP = ("Off: automatic. On: the noise's standard deviation on the 0-255 scale, as FFDNet and "
             "G'MIC take it, the same over the whole layer: mild camera noise is about 3-8, strong "
             "15-50. Higher removes more. Needs a model with a noise-level input.")
SETTINGS_GROUP = "denoise_cnn"


def _read_setting(key: str, default: str) -> str:
    try:
        from krita import Krita
        return Krita.instance().readSetting(SETTINGS_GROUP, key, default)
    except Exception:
        return default


def _write_setting(key: str, value) -> None:
    try:
        from krita import Krita
        Krita.instance().writeSetting(SETTINGS_GROUP, key, str(value))
    except Exception:
        pass


class DenoiseDialog(QDialog):
    def __init__(self, target, cfg: dict, parent=None):
        super().__init__(parent)
        self.target, self.cfg = target, cfg
        self.setObjectName("denoise_cnn_dialog")
        self.setWindowTitle("Denoise (CNN)")
        self.setModal(True)
        self._preview_run = None
        self._preview_input = None
        self._timer = QTimer(self)
        self._timer.setInterval(job.POLL_MS)
        self._timer.timeout.connect(self._poll_preview)

        # --- model and strength
        self.model = QComboBox()
        self.model.setObjectName("model")
        names = ["default"] + [m for m in cfg.get("models", []) if m != "default"]
        for n in names:
            self.model.addItem(n, n)
        self.model.addItem(CHECKPOINT_ITEM, None)
        self._last_model_index = 0
        self.model.activated.connect(self._model_activated)

        self.strength_slider = QSlider(Qt.Horizontal)
        self.strength_slider.setRange(0, 100)
        self.strength = QDoubleSpinBox()
        self.strength.setObjectName("strength")
        self.strength.setRange(0.0, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        self.strength_slider.valueChanged.connect(lambda v: self.strength.setValue(v / 100.0))
        self.strength.valueChanged.connect(lambda v: self.strength_slider.setValue(round(v * 100)))
        strength_row = QHBoxLayout()
        strength_row.addWidget(self.strength_slider, 1)
        strength_row.addWidget(self.strength)

        self.level_check, self.level_slider, self.level, level_row = self._set_value_row(
            "noise_level", maximum=MAX_NOISE_LEVEL, slider_max=MAX_NOISE_LEVEL, per_unit=10, step=0.1, value=1.0,
            tip=LEVEL_TIP, toggled=self._level_toggled)
        self.sigma_check, self.sigma_slider, self.sigma, sigma_row = self._set_value_row(
            "sigma", maximum=MAX_SIGMA, slider_max=SIGMA_SLIDER, per_unit=2, step=0.5, value=6.0,
            tip=SIGMA_TIP, toggled=self._sigma_toggled)

        self.new_layer = QCheckBox("Put the result on a new layer above")
        self.new_layer.setObjectName("new_layer")
        self.new_layer.setToolTip("Keeps the original layer as it is (one undo step removes the result). "
                                  "Off: the result replaces the layer (two undo steps restore it).")

        form = QFormLayout()
        form.addRow("Model:", self.model)
        form.addRow("Strength:", strength_row)
        form.addRow("Noise level:", level_row)
        form.addRow("Noise σ (0-255):", sigma_row)
        form.addRow("", self.new_layer)

        # --- advanced (collapsed by default)
        self.advanced_button = QToolButton()
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.RightArrow)
        self.advanced_button.setAutoRaise(True)
        self.advanced = QWidget()
        adv = QFormLayout(self.advanced)
        adv.setContentsMargins(16, 0, 0, 0)
        self.device = QComboBox()
        self.device.setObjectName("device")
        self.device.addItems(DEVICES)
        self.device.setToolTip("auto: CUDA, then Apple MPS, then the CPU")
        self.tile = QSpinBox()
        self.tile.setObjectName("tile")
        self.tile.setRange(64, 4096)
        self.tile.setSingleStep(64)
        self.tile.setSuffix(" px")
        self.tile.setToolTip("Smaller tiles use less memory; larger ones are a little faster")
        adv.addRow("Device:", self.device)
        adv.addRow("Tile size:", self.tile)
        self.advanced.setVisible(False)
        self.advanced_button.toggled.connect(self.show_advanced)

        # --- preview: overview with the box, 1:1 before/after split
        t = target
        self.box_w, self.box_h = min(PREVIEW, t.w), min(PREVIEW, t.h)
        self.box = (t.x + (t.w - self.box_w) // 2, t.y + (t.h - self.box_h) // 2, self.box_w, self.box_h)
        self.overview = Overview(t, self.box, self.move_box)
        self.overview.setObjectName("overview")
        self.overview.setToolTip("Drag the box to choose the part of the layer to preview")
        self.compare = CompareView(self.box_w, self.box_h)
        self.compare.setObjectName("compare")
        self.compare.setToolTip("Before (left of the line) and after (right); drag to move the line")
        self.preview_status = QLabel("")
        self.preview_status.setWordWrap(True)
        self.preview_result = None  # the box's pixels as OK would write them (Krita's bytes), last shown
        self.preview_box = None  # the box that preview_result shows
        self._pending = False  # a change came in while a preview ran: run one more
        self._requested_at = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(PREVIEW_DELAY_MS)
        self._debounce.timeout.connect(self.update_preview)
        side = QVBoxLayout()
        side.addWidget(QLabel("Preview area:"))
        side.addWidget(self.overview)
        side.addWidget(self.preview_status)
        side.addStretch(1)
        grid = QHBoxLayout()
        grid.addLayout(side)
        grid.addWidget(self.compare, 1)

        where = (f"selection, {target.w}×{target.h} px" if target.mask is not None or _has_selection(target)
                 else f"{target.w}×{target.h} px")
        info = QLabel(f'Layer "{target.node.name()}" ({where}, {target.color_model} {target.depth}'
                      f'{", linear" if target.linear else ""})')
        info.setWordWrap(True)

        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        lay = QVBoxLayout(self)
        lay.addWidget(info)
        lay.addLayout(form)
        lay.addWidget(self.advanced_button, 0, Qt.AlignLeft)
        lay.addWidget(self.advanced)
        lay.addLayout(grid)
        lay.addWidget(self.buttons)

        self._load_settings()
        self._show_before()
        for signal in (self.model.currentIndexChanged, self.strength.valueChanged, self.level.valueChanged,
                       self.level_check.toggled, self.sigma.valueChanged, self.sigma_check.toggled,
                       self.device.currentIndexChanged):
            signal.connect(self.schedule_preview)
        self.schedule_preview()

    # ------------------------------------------------------------------ settings
    def _load_settings(self) -> None:
        self.set_model(_read_setting("model", "default"), remember_missing=False)
        try:
            self.strength.setValue(float(_read_setting("strength", "1.0")))
        except ValueError:
            self.strength.setValue(1.0)
        self.strength_slider.setValue(round(self.strength.value() * 100))
        level = _read_setting("noise_level", "auto")
        try:
            self.level.setValue(min(max(float(level), 0.0), MAX_NOISE_LEVEL))
            self.level_check.setChecked(True)
        except ValueError:  # "auto"
            self.level_check.setChecked(False)
        sigma = _read_setting("sigma", "auto")
        try:
            self.sigma.setValue(min(max(float(sigma), 0.0), MAX_SIGMA))
            self.sigma_check.setChecked(True)
        except ValueError:  # "auto"
            self.sigma_check.setChecked(False)
        self.new_layer.setChecked(_read_setting("new_layer", "false") == "true")
        dev = _read_setting("device", "auto")
        self.device.setCurrentIndex(max(0, self.device.findText(dev)))
        try:
            self.tile.setValue(int(_read_setting("tile", str(DEFAULT_TILE))))
        except ValueError:
            self.tile.setValue(DEFAULT_TILE)

    def settings(self) -> dict:
        """What the job gets; `noise_level` and `sigma` are None for automatic."""
        return {"model": self.model.currentData() or "default", "strength": self.strength.value(),
                "noise_level": self.level.value() if self.level_check.isChecked() else None,
                "sigma": self.sigma.value() if self.sigma_check.isChecked() else None,
                "device": self.device.currentText(), "tile": self.tile.value(),
                "new_layer": self.new_layer.isChecked()}

    def set_noise_level(self, level) -> None:
        """None: automatic; a number: that level (clamped to 0..MAX_NOISE_LEVEL)."""
        if level is not None:
            self.level.setValue(min(max(float(level), 0.0), MAX_NOISE_LEVEL))
        self.level_check.setChecked(level is not None)

    def set_sigma(self, sigma) -> None:
        """None: automatic; a number: that sigma on the 0-255 scale (clamped to 0..MAX_SIGMA)."""
        if sigma is not None:
            self.sigma.setValue(min(max(float(sigma), 0.0), MAX_SIGMA))
        self.sigma_check.setChecked(sigma is not None)

    @staticmethod
    def _set_value_row(name: str, *, maximum: float, slider_max: float, per_unit: int, step: float, value: float,
                       tip: str, toggled) -> tuple[QCheckBox, QSlider, QDoubleSpinBox, QHBoxLayout]:
        """A "Set" check box, a slider (0..slider_max) and a spin box (0..maximum) kept in step, greyed
        out until the box is checked. The check box is named `set_<name>`, the spin box `name`."""
        check = QCheckBox("Set")
        check.setObjectName(f"set_{name}")
        slider = QSlider(Qt.Horizontal)
        slider.setRange(0, round(slider_max * per_unit))
        spin = QDoubleSpinBox()
        spin.setObjectName(name)
        spin.setRange(0.0, maximum)
        spin.setSingleStep(step)
        spin.setDecimals(1)
        spin.setValue(value)
        slider.setValue(round(min(value, slider_max) * per_unit))
        slider.valueChanged.connect(lambda v: spin.setValue(v / per_unit))
        spin.valueChanged.connect(lambda v: slider.setValue(round(min(v, slider_max) * per_unit)))
        check.toggled.connect(toggled)
        for w in (check, slider, spin):
            w.setToolTip(tip)
        row = QHBoxLayout()
        row.addWidget(check)
        row.addWidget(slider, 1)
        row.addWidget(spin)
        slider.setEnabled(False)
        spin.setEnabled(False)
        return check, slider, spin, row

    def _level_toggled(self, on: bool) -> None:
        self.level_slider.setEnabled(on)
        self.level.setEnabled(on)
        if on and getattr(self, "sigma_check", None) is not None:
            self.sigma_check.setChecked(False)

    def _sigma_toggled(self, on: bool) -> None:
        self.sigma_slider.setEnabled(on)
        self.sigma.setEnabled(on)
        if on:
            self.level_check.setChecked(False)

    def set_model(self, name_or_path: str, remember_missing: bool = True) -> None:
        """Select a shipped model by name or a checkpoint file by path (added to the list)."""
        i = self.model.findData(name_or_path)
        if i < 0:
            looks_like_path = "/" in name_or_path or "\\" in name_or_path or "." in name_or_path
            if not looks_like_path or not remember_missing and not _exists(name_or_path):
                i = 0
            else:
                i = self.model.count() - 1
                self.model.insertItem(i, _short(name_or_path), name_or_path)
                self.model.setItemData(i, name_or_path, Qt.ToolTipRole)
        self.model.setCurrentIndex(i)
        self._last_model_index = i

    def _model_activated(self, index: int) -> None:
        if self.model.itemData(index) is not None:
            self._last_model_index = index
            return
        path, _ = QFileDialog.getOpenFileName(self, "Denoiser checkpoint", "",
                                              "Checkpoints (*.safetensors *.pt *.pth);;All files (*)")
        if path:
            self.set_model(path)
        else:
            self.model.setCurrentIndex(self._last_model_index)

    def show_advanced(self, on: bool) -> None:
        self.advanced_button.setChecked(on)
        self.advanced_button.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.advanced.setVisible(on)
        self.adjustSize()

    # ------------------------------------------------------------------ preview
    def _show_before(self) -> None:
        """The box's original pixels at once where Qt can show Krita's bytes as they are (8-bit
        RGBA: B,G,R,A is QImage's ARGB32); other formats wait for the worker's 8-bit picture."""
        x, y, w, h = self.box
        t = self.target
        self.compare.set_after(None)
        if t.color_model == "RGBA" and t.depth == "U8":
            raw = pixels.crop(t.original, t.w, t.h, t.bpp, x - t.x, y - t.y, w, h)
            self.compare.set_before(QPixmap.fromImage(QImage(raw, w, h, w * 4, QImage.Format_ARGB32).copy()))
        else:
            self.compare.set_before(None)

    def move_box(self, x: int, y: int) -> None:
        """Put the preview box's top-left corner at document (x, y), kept inside the target."""
        t = self.target
        x = min(max(int(x), t.x), t.x + t.w - self.box_w)
        y = min(max(int(y), t.y), t.y + t.h - self.box_h)
        if (x, y) == self.box[:2]:
            return
        self.box = (x, y, self.box_w, self.box_h)
        self.overview.set_box(self.box)
        self._show_before()
        self.schedule_preview()

    def schedule_preview(self, *_) -> None:
        """Update the preview PREVIEW_DELAY_MS after the last change."""
        if self._requested_at is None:
            self._requested_at = time.monotonic()
        self._debounce.start()

    def update_preview(self) -> None:
        """Start a preview of the box now (or right after the one running)."""
        self._debounce.stop()
        if self._requested_at is None:
            self._requested_at = time.monotonic()
        if self._preview_run is not None:
            self._pending = True
            return
        self._pending = False
        self.preview_status.setText("Updating the preview…")
        self._preview_run = job.RegionRun(self.target, self.box, self.cfg, self.settings(), preview=True).start()
        self._preview_started = self._requested_at
        self._requested_at = None
        self._timer.start()

    def preview_busy(self) -> bool:
        """True until the preview for the current settings is on screen (or failed)."""
        return self._preview_run is not None or self._pending or self._debounce.isActive()

    def _poll_preview(self) -> None:
        run = self._preview_run
        if run is None:
            self._timer.stop()
            return
        if not run.poll():
            return
        self._timer.stop()
        self._preview_run = None
        if self._pending:  # settings changed meanwhile: this result is stale
            self.update_preview()
            return
        if run.result is not None:
            assert run.rgba8 is not None and run.rgba8_before is not None  # a preview run asks for both
            x, y, w, h = run.rect
            self.preview_result, self.preview_box = run.result, run.rect
            self.compare.set_before(_rgba8_pixmap(run.rgba8_before, w, h))
            self.compare.set_after(_rgba8_pixmap(run.rgba8, w, h))
            secs = time.monotonic() - self._preview_started
            self.preview_status.setText(f"{w}×{h} px at 1:1 in {secs:.2f} s.\nLeft of the line: before.")
        elif run.cancelled:
            self.preview_status.setText("Preview cancelled.")
        else:
            self.compare.set_after(None)
            self.preview_status.setText(f"Preview failed: {run.error}")

    def stop_preview(self) -> None:
        """Stop showing previews. A running one is not killed (the worker keeps its model and
        finishes it before the next request)."""
        self._preview_run = None
        self._pending = False
        self._debounce.stop()
        self._timer.stop()

    def done(self, result: int) -> None:
        self.stop_preview()
        if result == QDialog.Accepted:
            s = self.settings()
            for k in ("model", "strength", "device", "tile"):
                _write_setting(k, s[k])
            _write_setting("noise_level", "auto" if s["noise_level"] is None else s["noise_level"])
            _write_setting("sigma", "auto" if s["sigma"] is None else s["sigma"])
            _write_setting("new_layer", "true" if s["new_layer"] else "false")
        super().done(result)


def _has_selection(target) -> bool:
    try:
        return target.doc.selection() is not None
    except Exception:
        return False


def _exists(path: str) -> bool:
    import os
    return os.path.isfile(os.path.expanduser(path))


def _short(path: str) -> str:
    import os
    return os.path.basename(path) or path


class Overview(QWidget):
    """The target, scaled to fit OVERVIEW px, with the preview box; click or drag to move the box."""

    def __init__(self, target, box, on_move):
        super().__init__()
        self.target, self.box, self.on_move = target, box, on_move
        t = target
        self.scale = min(1.0, OVERVIEW / max(t.w, t.h))
        step = max(1, int(1 / self.scale))
        raw, tw, th = pixels.subsample(t.original, t.w, t.h, t.bpp, step)
        img = _pixmap(pixels.to_float(raw, t.color_model, t.depth), tw, th, t.channels, t.linear)
        self.pixmap = img.scaled(max(1, round(t.w * self.scale)), max(1, round(t.h * self.scale)),
                                 Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
        self.setFixedSize(self.pixmap.size())
        self.setCursor(Qt.OpenHandCursor)

    def set_box(self, box) -> None:
        self.box = box
        self.update()

    def paintEvent(self, event):
        p = QPainter(self)
        p.drawPixmap(0, 0, self.pixmap)
        x, y, w, h = self.box
        t, sc = self.target, self.scale
        r = QRect(round((x - t.x) * sc), round((y - t.y) * sc), max(2, round(w * sc)), max(2, round(h * sc)))
        p.setPen(QPen(QColor(0, 0, 0), 3))
        p.drawRect(r.adjusted(0, 0, -1, -1))
        p.setPen(QPen(QColor(255, 255, 255), 1))
        p.drawRect(r.adjusted(0, 0, -1, -1))
        p.end()

    def _move(self, event):
        x, y, w, h = self.box
        t = self.target
        self.on_move(t.x + event.x() / self.scale - w / 2, t.y + event.y() / self.scale - h / 2)

    mousePressEvent = _move
    mouseMoveEvent = _move


class CompareView(QWidget):
    """Before left of a vertical line, after right of it, at 1:1; drag to move the line."""

    def __init__(self, w: int, h: int):
        super().__init__()
        self.before = self.after = None
        self.split = 0.5
        self.setFixedSize(w, h)
        self.setCursor(Qt.SplitHCursor)

    def set_before(self, pixmap) -> None:
        self.before = pixmap
        self.update()

    def set_after(self, pixmap) -> None:
        self.after = pixmap
        self.update()

    def paintEvent(self, event):
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(58, 58, 58))
        x = round(self.width() * self.split)
        if self.after is not None:
            p.drawPixmap(0, 0, self.after)
        if self.before is not None:
            w = x if self.after is not None else self.width()
            p.drawPixmap(0, 0, self.before, 0, 0, w, self.height())
        if self.after is not None:
            p.setPen(QPen(QColor(255, 255, 255), 1))
            p.drawLine(x, 0, x, self.height())
        else:
            p.setPen(QColor(200, 200, 200))
            p.drawText(self.rect(), Qt.AlignCenter, "Preview on the way…")
        p.end()

    def _move(self, event):
        self.split = min(max(event.x() / max(1, self.width()), 0.0), 1.0)
        self.update()

    mousePressEvent = _move
    mouseMoveEvent = _move


def _rgba8_pixmap(data: bytes, w: int, h: int) -> QPixmap:
    return QPixmap.fromImage(QImage(data, w, h, w * 4, QImage.Format_RGBA8888).copy())


def _pixmap(floats: bytes, w: int, h: int, channels: int, linear: bool) -> QPixmap:
    data = pixels.to_rgba8(floats, channels, linear)
    img = QImage(data, w, h, w * 4, QImage.Format_RGBA8888).copy()  # copy: own the buffer
    return QPixmap.fromImage(img)
