"""The worker protocol's shared constants: one definition for both sides (standard library only).

The worker (`denoise_core.worker`), the core's limits (`denoise_core.inference.api`, `.device`), the
host-side client (`denoise_client.py`) and both plug-ins import these names from here. The hosts'
Pythons have neither torch nor denoise_core, so `denoise-plugin install` copies this file beside
`denoise_client.py` in the host's plug-in folder; under the same module name, `denoise_protocol`, it
is `denoise_plugins.common.denoise_protocol` in a source checkout and in the installed package.
See `denoise_core/worker.py` for the messages and job files these constants belong to.
"""

PROTOCOL_VERSION = 1  # a job's "version": the worker refuses a job of another version
CONFIG_NAME = "denoise_worker.json"  # beside the plug-in: {"python", "pythonpath", "models", "default_model"}
JOB_DIR_PREFIX = "denoise-cnn-"  # the client's private job folder; the worker removes it when the client dies
MAX_REQUEST_BYTES = 1 << 20  # a request line of the persistent worker (a path and a few settings)
IDLE_S = 600  # a persistent worker with no request for this long exits (and frees its memory)

MAX_NOISE_LEVEL = 4.0  # "noise_level": relative to what the model finds by itself (1 about automatic)
MAX_SIGMA = 100.0  # "sigma": the noise's standard deviation on the 0-255 scale (absolute)
DEFAULT_TILE = 1024  # "tile": a model call sees (tile + 2 * overlap)^2 pixels: ~300 MB for `unet` on the CPU
DEVICES = ("auto", "cpu", "cuda", "mps")  # "device"
SAMPLE_BYTES = {"f32": 4, "f16": 2, "u16": 2, "u8": 1}  # "dtype" of in.raw and out.raw: bytes per sample
