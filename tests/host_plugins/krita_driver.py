"""Test-only Krita plugin that drives the real Denoise (CNN) plugin as a user would, for
tests/test_krita_e2e.py (never installed for users).

tests/test_krita_e2e.py installs it as `pykrita/denoise_cnn_test/__init__.py` beside the real
plugin, with the cases in the JSON file named by DENOISE_KRITA_TEST. Once Krita's main window is
up it makes a document per case, triggers the real action `denoise_cnn`, drives the real dialog
(found with a QTimer), follows the job it starts (the real `DenoiseJob`, extended here to be
listed when made), writes the layer's pixels and what it saw to files, and ends Krita with
`os._exit(rc)` so the exit status reaches the test and no "save changes?" dialog blocks.
"""
import json
import os
import time
import traceback

from krita import Krita, Selection
from PyQt5.QtCore import QByteArray, QEventLoop, QPoint, QRect, QTimer
from PyQt5.QtWidgets import QApplication, QDialog, QMessageBox, QProgressDialog, QPushButton

SPEC = json.load(open(os.environ["DENOISE_KRITA_TEST"]))
OUT = SPEC["out"]


def log(*a):
    with open(os.path.join(OUT, "plugin.log"), "a") as f:
        f.write(" ".join(str(x) for x in a) + "\n")


def pump(seconds):
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def wait(pred, timeout, what):
    end = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() > end:
            raise TimeoutError("timed out waiting for " + what)
        pump(0.05)


def visible(cls, name):
    for w in QApplication.topLevelWidgets():
        if isinstance(w, cls) and w.objectName() == name and w.isVisible():
            return w
    return None


def shot_menu(qwin, path):
    mb = qwin.menuBar()
    filt = next(a for a in mb.actions() if a.menu() is not None and
                (a.menu().objectName() == "filter" or a.text().replace("&", "") == "Filter"))
    mb.setActiveAction(filt)
    menu = wait(lambda: filt.menu().isVisible() and filt.menu(), 10, "Filter menu")
    enh = next(a for a in menu.actions() if a.menu() is not None and
               (a.menu().objectName() == "enhance_filters" or a.text().replace("&", "") == "Enhance"))
    menu.setActiveAction(enh)
    sub = enh.menu()
    if not sub.isVisible():
        g = menu.actionGeometry(enh)
        sub.popup(menu.mapToGlobal(g.topRight()))
    wait(lambda: sub.isVisible(), 10, "Enhance submenu")
    ours = next(a for a in sub.actions() if a.objectName() == "denoise_cnn")
    sub.setActiveAction(ours)
    pump(0.8)
    r = QRect(0, 0, 0, 0)
    for w in (menu, sub):  # the menu bar's width is the screen's: crop just right of the submenu
        r = r.united(QRect(w.mapToGlobal(QPoint(0, 0)), w.size()))
    r = QRect(0, 0, min(1280, r.right() + 18), min(1024, r.bottom() + 40))
    QApplication.primaryScreen().grabWindow(0).copy(r).save(path)
    log("menu entries:", [a.text() for a in sub.actions()])
    sub.hide()
    menu.hide()
    mb.setActiveAction(None)
    pump(0.3)


STARTED = []  # the plugin's jobs, in order


def observe_jobs(job):
    """Have the real plugin make a DenoiseJob that lists itself in STARTED (its `state` and
    `message` say how it ended)."""
    class ObservedJob(job.DenoiseJob):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            STARTED.append(self)
    job.DenoiseJob = ObservedJob


def run_case(app, win, job, case):
    doc = app.createDocument(case["w"], case["h"], case["name"], case["model"], case["depth"], "", 72.0)
    doc.setBatchmode(True)
    if case.get("group"):
        # a group on top, active: the plugin must refuse it. Added before the view: under Xvfb with
        # no window manager, Document.setActiveNode (and activateNextLayer) change nothing in
        # Krita 5.1.5, but a new view activates the topmost layer.
        doc.rootNode().addChildNode(doc.createGroupLayer("Group"), None)
    win.addView(doc)
    app.setActiveDocument(doc)
    pump(0.3)
    node = [n for n in doc.topLevelNodes() if n.type() == "paintlayer"][0]
    if not case.get("group"):
        doc.setActiveNode(node)
    if os.path.exists(os.path.join(OUT, case["name"] + ".in")):
        with open(os.path.join(OUT, case["name"] + ".in"), "rb") as f:
            raw = f.read()
        node.setPixelData(QByteArray(raw), 0, 0, case["w"], case["h"])
    doc.refreshProjection()
    doc.waitForDone()
    with open(os.path.join(OUT, case["name"] + ".before"), "wb") as f:
        f.write(bytes(node.pixelData(0, 0, case["w"], case["h"])))
    if case.get("selection"):
        x, y, w, h = case["selection"]
        sel = Selection()
        sel.select(x, y, w, h, 255)
        doc.setSelection(sel)
    pump(0.3)
    res = {"profile": node.colorProfile(), "colorModel": node.colorModel(), "depth": node.colorDepth(),
           "active_type": doc.activeNode().type()}
    if case.get("menu_shot"):
        shot_menu(win.qwindow(), case["menu_shot"])

    seen = {}

    def when_visible(cls, name, every_ms, act):
        """Poll from the event loop (the modal dialog blocks the caller) until the widget shows."""
        def poll():
            if seen.get("stop"):
                return
            w = visible(cls, name)
            if w is None:
                QTimer.singleShot(every_ms, poll)
            else:
                act(w)
        QTimer.singleShot(50, poll)

    def on_dialog(dlg):
        opened = time.monotonic()
        seen["dialog"] = True
        seen["models"] = [dlg.model.itemText(i) for i in range(dlg.model.count())]
        seen["loaded"] = dlg.settings()  # what the dialog restored from the last accepted run
        if case.get("set_model"):
            dlg.set_model(case["set_model"])
        dlg.set_noise_level(case.get("noise_level"))
        if "sigma" in case:
            dlg.set_sigma(case["sigma"])
        dlg.tile.setValue(case.get("tile", 1024))
        dlg.new_layer.setChecked(bool(case.get("new_layer")))
        if case.get("preview"):
            # the live preview: one at opening (the worker starts here: first preview), one after
            # the box is dragged (512x512, worker up: latency), one after a control changes; then OK
            # seconds from each change (the dialog opening, the box moved, the strength changed)
            # to the picture the preview puts up
            changed = [opened]
            shown = seen["preview_seconds"] = []
            set_after = dlg.compare.set_after

            def timed_set_after(pixmap):
                if pixmap is not None:
                    shown.append(time.monotonic() - changed[-1])
                set_after(pixmap)
            dlg.compare.set_after = timed_set_after
            w = job.worker(dlg.cfg)
            wait(lambda: not dlg.preview_busy(), 300, "the first preview")
            seen["pids"] = [w.pid]
            changed.append(time.monotonic())
            dlg.move_box(*case["preview"])
            wait(lambda: not dlg.preview_busy(), 300, "the preview after moving the box")
            seen["pids"].append(w.pid)
            changed.append(time.monotonic())
            dlg.strength.setValue(case["strength"])
            wait(lambda: not dlg.preview_busy(), 300, "the preview after a strength change")
            seen["pids"].append(w.pid)
            seen["preview_box"] = list(dlg.preview_box)
            seen["preview_status"] = dlg.preview_status.text()
            with open(os.path.join(OUT, case["name"] + ".preview"), "wb") as f:
                f.write(dlg.preview_result)
            seen["worker"] = w
        if case.get("dialog_shot"):
            dlg.show_advanced(True)
            dlg.update_preview()
            wait(lambda: not dlg.preview_busy(), 300, "preview")
            seen["preview"] = dlg.preview_status.text()
            pump(0.3)
            dlg.grab().save(case["dialog_shot"])
        dlg.strength.setValue(case.get("strength", 1.0))
        seen["settings"] = dlg.settings()
        if case.get("reject"):
            dlg.reject()
        else:
            dlg.accept()

    def on_progress(p):
        seen["cancel_clicked"] = True
        p.findChild(QPushButton).click()  # the user's click on Cancel

    when_visible(QDialog, "denoise_cnn_dialog", 50, on_dialog)
    if case.get("cancel"):
        when_visible(QProgressDialog, "denoise_cnn_progress", 20, on_progress)
    t0 = time.time()
    jobs_before = len(STARTED)
    app.action("denoise_cnn").trigger()  # returns once the dialog is closed and the job started
    if case.get("reject"):
        return seen
    if len(STARTED) > jobs_before:
        started = STARTED[-1]
        wait(lambda: started.state in ("done", "error", "cancelled"), 600, "the job")
        res["state"], res["message"] = started.state, started.message
    else:  # refused before the dialog: the message box says why
        box = wait(lambda: visible(QMessageBox, "denoise_cnn_message"), 20, "the message box")
        res["state"], res["message"] = "error", box.text()
    seen["stop"] = True
    res["seconds"] = round(time.time() - t0, 2)
    if res["state"] != "done":
        box = wait(lambda: visible(QMessageBox, "denoise_cnn_message"), 20, "the message box")
        res["box_text"] = box.text()
        box.accept()
    pump(0.3)
    doc.waitForDone()
    seen.pop("stop", None)
    w = seen.pop("worker", None)
    if w is not None:  # the job ran on the same process as the previews
        seen["pids"].append(w.pid)
        seen["worker_starts"] = w.starts
    res.update(seen)
    paint = [n for n in doc.topLevelNodes() if n.type() == "paintlayer"]
    result = paint[-1]
    res["layers"] = [n.name() for n in paint]
    res["active"] = doc.activeNode().name()
    with open(os.path.join(OUT, case["name"] + ".out"), "wb") as f:
        f.write(bytes(result.pixelData(0, 0, case["w"], case["h"])))
    res["original_kept"] = any(n == node for n in paint)  # the node object itself is still there
    with open(os.path.join(OUT, case["name"] + ".orig"), "wb") as f:
        f.write(bytes(node.pixelData(0, 0, case["w"], case["h"])))
    if case.get("undo"):
        for _ in range(case["undo"]):
            app.action("edit_undo").trigger()
            doc.waitForDone()
            pump(0.5)
            doc.waitForDone()
        res["layers_after_undo"] = [n.name() for n in doc.topLevelNodes() if n.type() == "paintlayer"]
        with open(os.path.join(OUT, case["name"] + ".undo"), "wb") as f:
            f.write(bytes(node.pixelData(0, 0, case["w"], case["h"])))
    return res


def main():
    rc = 1
    try:
        app = Krita.instance()
        app.setBatchmode(True)
        win = wait(lambda: app.activeWindow(), 180, "the main window")
        qwin = win.qwindow()
        qwin.setGeometry(0, 0, 1280, 1024)
        pump(1.0)
        import denoise_cnn.job as job
        observe_jobs(job)
        results = {"action": app.action("denoise_cnn") is not None,
                   "action_text": app.action("denoise_cnn").text() if app.action("denoise_cnn") else None}
        for case in SPEC["cases"]:
            log("case", case["name"])
            results[case["name"]] = run_case(app, win, job, case)
            log("  ->", results[case["name"]])
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        rc = 0
    except BaseException:
        log(traceback.format_exc())
    os._exit(rc)


QTimer.singleShot(0, main)
