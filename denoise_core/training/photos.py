"""The clean training photos: which files from which Debian packages, the fixed train/validation
split, and preparation (2x box downscale to hide JPEG artefacts, saved as PNG).

None of the commands or the API uses this module; it is the record of the shipped weights' data
(the split their cards name) for scripts/ and bench/, and ships in the wheel so that both import
one copy without path tricks. It runs nothing on import: `download_packages` calls `apt-get
download` only when called."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGES = ("lomiri-wallpapers-16.04", "mate-backgrounds", "plasma-workspace-wallpapers", "palapeli-data")

_PLASMA = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
           "Grey", "Kite", "OneStandsOut", "Path", "summer_1am")
_LOMIRI = ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
           "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
           "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
           "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
           "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")
_MATE = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops",
         "Storm", "TwoWings", "Wood", "YellowFlower")
_PALAPELI = ("castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee",
             "panther-chameleon-female")

# name -> path inside the unpacked packages. Renders and abstract art are left out on purpose.
SOURCES: dict[str, str] = {
    **{n: f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg" for n in _PLASMA},
    **{n: f"usr/share/backgrounds/{n}.jpg" for n in _LOMIRI},
    **{n: f"usr/share/backgrounds/mate/nature/{n}.jpg" for n in _MATE},
    **{n: f"usr/share/palapeli/collection/{n}.jpg" for n in _PALAPELI},
}

# Held out from every training run and never used to pick weights: the benchmark's photos.
BENCHMARK = ("EveningGlow", "aitzgorri_by_Aitzol_Berasategi", "Dune", "citrus-fruits",
             "friends_by_Aitzol_Berasategi", "Kite")
# Model selection (validation curves) since mix-v3: taken out of training then. (Weights before
# mix-v3 trained on them and validated on BENCHMARK, which is why those runs shipped their last
# step rather than their best validation step.)
SELECTION = ("Garden", "ColdRipple", "castle-maintenon")
TRAIN = tuple(n for n in SOURCES if n not in BENCHMARK and n not in SELECTION)
VALIDATION = BENCHMARK  # the name the benchmarks of releases 0.1.0-0.3.0 used


def download_packages(dest: str | Path) -> Path:
    """apt-get download + dpkg-deb -x the photo packages into dest/root (no root, no deps)."""
    dest = Path(dest)
    root = dest / "root"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True)
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def prepare(root: str | Path, out: str | Path, *, factor: int = 2) -> list[Path]:
    """Downscale each allowed photo `factor`x with a box filter and save it as PNG in `out`."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rel in SOURCES.items():
        dst = out / f"{name}.png"
        if not dst.exists():
            src = root / rel
            with Image.open(src) as im:
                im = im.convert("RGB")
                im = im.reduce(factor) if factor > 1 else im
                im.save(dst, compress_level=1)
        written.append(dst)
    return written


def default_folder() -> Path:
    """Where the prepared photos are looked for: $DENOISE_PHOTOS, else ~/.cache/denoise-cnn/photos
    (where bench/quality.py builds them when they are missing)."""
    return Path(os.environ.get("DENOISE_PHOTOS") or "~/.cache/denoise-cnn/photos").expanduser()


def require_prepared(folder: str | Path | None, names: tuple[str, ...]) -> Path:
    """`folder` (or `default_folder()` when None) if it holds `<name>.png` for every name; otherwise
    SystemExit naming the folder, what is missing and how to build it."""
    folder = Path(folder).expanduser() if folder else default_folder()
    missing = [n for n in names if not (folder / f"{n}.png").is_file()]
    if missing:
        raise SystemExit(
            f"{folder}: {len(missing)} of {len(names)} prepared photos missing (e.g. {missing[0]}.png). Pass "
            f"--photos DIR or set DENOISE_PHOTOS to a folder of them, or build them there (apt-get download "
            f"of {', '.join(PACKAGES)}; no root needed):\n  python -c \"from denoise_core.training.photos import "
            f"download_packages, prepare; import tempfile; prepare(download_packages(tempfile.mkdtemp()), "
            f"'{folder}')\"")
    return folder


def load_photos(folder: str | Path, names: tuple[str, ...]) -> list[np.ndarray]:
    folder = Path(folder)
    return [np.asarray(Image.open(folder / f"{n}.png").convert("RGB")) for n in names]
