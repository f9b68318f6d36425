"""The Krita Extension: one action, `denoise_cnn`, in Filter › Enhance."""
from krita import Extension

ACTION_ID = "denoise_cnn"
MENU = "filter/enhance_filters"


class DenoiseExtension(Extension):
    def __init__(self, parent):
        super().__init__(parent)

    def setup(self):
        pass

    def createActions(self, window):
        # must happen here: actions created later are never placed in the menu
        action = window.createAction(ACTION_ID, "Denoise (CNN)…", MENU)
        action.setToolTip("Remove photo noise from the active paint layer with a neural network")
        action.triggered.connect(self.run)

    def run(self):
        from . import job

        job.run_interactive()
