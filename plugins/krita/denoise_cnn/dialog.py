"""The modal "Denoise (CNN)" dialog: model, strength, noise level, advanced (device, tile size),
crop preview.

Noise level: unchecked is automatic (the model judges the noise, one pass); checked sends a value
0..4 (1 about automatic, 2 removes noise automatic leaves, 0 keeps the image; denoise_core/levels.py).

The preview runs the worker on a centred crop of at most 256x256 pixels in a background thread
(job.WorkerRun), polled by a QTimer, so the dialog stays responsive and Cancel/OK stop it.
"""
from __future__ import annotations

from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QImage, QPixmap
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog,
                             QFormLayout, QGridLayout, QHBoxLayout, QLabel, QPushButton, QSlider,
                             QSpinBox, QToolButton, QVBoxLayout, QWidget)

from . import job, pixels

CHECKPOINT_ITEM = "Checkpoint file…"
DEVICES = ("auto", "cpu", "cuda", "mps")
PREVIEW = 256
MAX_NOISE_LEVEL = 4.0  # denoise_core.api.MAX_NOISE_LEVEL (no torch here, so not imported)
LEVEL_TIP = ("Off: automatic, the model judges the noise (one pass). On: tell it how much to remove, "
             "relative to what it finds by itself: 1 is about automatic, 2 also removes noise that "
             "automatic leaves, 0 keeps the image. Needs a model with a noise-level input.")
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

        self.level_check = QCheckBox("Set")
        self.level_check.setObjectName("set_noise_level")
        self.level_slider = QSlider(Qt.Horizontal)
        self.level_slider.setRange(0, round(MAX_NOISE_LEVEL * 10))
        self.level = QDoubleSpinBox()
        self.level.setObjectName("noise_level")
        self.level.setRange(0.0, MAX_NOISE_LEVEL)
        self.level.setSingleStep(0.1)
        self.level.setDecimals(1)
        self.level.setValue(1.0)
        self.level_slider.setValue(10)
        self.level_slider.valueChanged.connect(lambda v: self.level.setValue(v / 10.0))
        self.level.valueChanged.connect(lambda v: self.level_slider.setValue(round(v * 10)))
        self.level_check.toggled.connect(self._level_toggled)
        for w in (self.level_check, self.level_slider, self.level):
            w.setToolTip(LEVEL_TIP)
        level_row = QHBoxLayout()
        level_row.addWidget(self.level_check)
        level_row.addWidget(self.level_slider, 1)
        level_row.addWidget(self.level)
        self._level_toggled(False)

        form = QFormLayout()
        form.addRow("Model:", self.model)
        form.addRow("Strength:", strength_row)
        form.addRow("Noise level:", level_row)

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

        # --- preview
        self.before = QLabel()
        self.after = QLabel()
        for lab in (self.before, self.after):
            lab.setFixedSize(PREVIEW, PREVIEW)
            lab.setAlignment(Qt.AlignCenter)
            lab.setStyleSheet("QLabel { background: #3a3a3a; color: #bbb; }")
        self.preview_button = QPushButton("Update preview")
        self.preview_button.setObjectName("preview")
        self.preview_button.clicked.connect(self.update_preview)
        self.preview_status = QLabel("")
        self.preview_status.setWordWrap(True)
        grid = QGridLayout()
        grid.addWidget(QLabel("Before"), 0, 0, Qt.AlignHCenter)
        grid.addWidget(QLabel("After"), 0, 1, Qt.AlignHCenter)
        grid.addWidget(self.before, 1, 0)
        grid.addWidget(self.after, 1, 1)
        prow = QHBoxLayout()
        prow.addWidget(self.preview_button)
        prow.addWidget(self.preview_status, 1)

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
        lay.addLayout(prow)
        lay.addWidget(self.buttons)

        self._load_settings()
        self._show_before()

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
        dev = _read_setting("device", "auto")
        self.device.setCurrentIndex(max(0, self.device.findText(dev)))
        try:
            self.tile.setValue(int(_read_setting("tile", "1024")))
        except ValueError:
            self.tile.setValue(1024)

    def settings(self) -> dict:
        """What the job gets; `noise_level` is None for automatic."""
        return {"model": self.model.currentData() or "default", "strength": self.strength.value(),
                "noise_level": self.level.value() if self.level_check.isChecked() else None,
                "device": self.device.currentText(), "tile": self.tile.value()}

    def set_noise_level(self, level) -> None:
        """None: automatic; a number: that level (clamped to 0..MAX_NOISE_LEVEL)."""
        if level is not None:
            self.level.setValue(min(max(float(level), 0.0), MAX_NOISE_LEVEL))
        self.level_check.setChecked(level is not None)

    def _level_toggled(self, on: bool) -> None:
        self.level_slider.setEnabled(on)
        self.level.setEnabled(on)

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
        floats, w, h = self.target.crop_floats(PREVIEW)
        self._preview_input = (floats, w, h)
        self.before.setPixmap(_pixmap(floats, w, h, self.target.channels, self.target.linear))
        self.after.setText("Update preview\nto see the result")

    def update_preview(self) -> None:
        self.stop_preview()
        floats, w, h = self._preview_input
        self.preview_status.setText("Running the denoiser on the crop…")
        self._preview_run = job.WorkerRun(floats, w, h, self.target.channels, self.cfg, self.settings(),
                                          self.target.transfer).start()
        self._timer.start()

    def preview_busy(self) -> bool:
        """True until the running preview's result (or error) is on screen."""
        return self._preview_run is not None

    def _poll_preview(self) -> None:
        run = self._preview_run
        if run is None:
            self._timer.stop()
            return
        if not run.done:
            self.preview_status.setText(f"Running the denoiser on the crop… {int(run.progress * 100)} %")
            return
        self._timer.stop()
        self._preview_run = None
        if run.result is not None:
            floats, w, h = self._preview_input
            merged = self.target_mask_crop_merge(floats, run.result, w, h)
            self.after.setPixmap(_pixmap(merged, w, h, self.target.channels, self.target.linear))
            self.preview_status.setText(f"Preview of a {w}×{h} crop from the centre.")
        elif run.cancelled:
            self.preview_status.setText("Preview cancelled.")
        else:
            self.after.setText("No preview")
            self.preview_status.setText(f"Preview failed: {run.error}")

    def target_mask_crop_merge(self, floats: bytes, result: bytes, w: int, h: int) -> bytes:
        t = self.target
        if t.mask is None:
            return pixels.apply_mask(floats, result, None, t.channels)
        x, y = (t.w - w) // 2, (t.h - h) // 2
        mask = pixels.crop(t.mask, t.w, t.h, 1, x, y, w, h)
        return pixels.apply_mask(floats, result, mask, t.channels)

    def stop_preview(self) -> None:
        if self._preview_run is not None:
            self._preview_run.cancel()
            self._preview_run = None
        self._timer.stop()

    def done(self, result: int) -> None:
        self.stop_preview()
        if result == QDialog.Accepted:
            s = self.settings()
            for k in ("model", "strength", "device", "tile"):
                _write_setting(k, s[k])
            _write_setting("noise_level", "auto" if s["noise_level"] is None else s["noise_level"])
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


def _pixmap(floats: bytes, w: int, h: int, channels: int, linear: bool) -> QPixmap:
    data = pixels.to_rgba8(floats, channels, linear)
    img = QImage(data, w, h, w * 4, QImage.Format_RGBA8888).copy()  # copy: own the buffer
    return QPixmap.fromImage(img)
