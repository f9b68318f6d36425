"""Tiled inference: where tiles sit, how much context each reads, how their outputs blend, and the
one tile loop (`run_tiles`) that both the sRGB `Denoiser` and the raw `RawDenoiser` run.

The geometry knows no model: the image is partitioned into core boxes whose origins are multiples of
the model's size multiple (so a translation-variant net, e.g. one that pixel-unshuffles, sees every
tile on the same grid as the whole image). Each tile reads its core plus `overlap` pixels of
context on every inner side and `border` pixels (mirrored) past the image edge, so a model call
sees at most (tile + 2*overlap)^2 pixels; each tile contributes to its core plus a feather band of
`feather` pixels on each inner edge, with linear ramps that sum to exactly one. When the overlap
covers the model's receptive field the tiled result equals the untiled one (the whole image plus
the same mirrored border); the border can be thinner than the overlap, since past the image edge
the context is made up anyway, and every pixel of it costs model time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

ProgressFn = Callable[[int, int], None]  # (tiles done, tiles in all)
CancelFn = Callable[[], bool]  # asked before every tile: True stops the run


class Cancelled(Exception):
    """The run's `cancel` callback asked to stop; nothing of the result is returned."""


@dataclass(frozen=True)
class Tile:
    index: int
    row: int
    core: tuple[int, int, int, int]      # y0, x0, y1, x1: the part this tile owns
    support: tuple[int, int, int, int]   # core grown by the feather band on inner edges
    window: tuple[int, int, int, int]    # what the model reads: core grown by `overlap` (may leave the image)


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile: int
    overlap: int
    feather: int
    multiple: int
    ys: tuple[int, ...]   # core boundaries along y, first 0, last height
    xs: tuple[int, ...]
    border: int           # mirrored context past the image edge, at most the overlap

    @property
    def rows(self) -> int:
        return len(self.ys) - 1

    @property
    def cols(self) -> int:
        return len(self.xs) - 1

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self):
        f, ov, b = self.feather, self.overlap, self.border
        i = 0
        for r in range(self.rows):
            y0, y1 = self.ys[r], self.ys[r + 1]
            sy0 = y0 - f if r > 0 else y0
            sy1 = y1 + f if r < self.rows - 1 else y1
            for c in range(self.cols):
                x0, x1 = self.xs[c], self.xs[c + 1]
                sx0 = x0 - f if c > 0 else x0
                sx1 = x1 + f if c < self.cols - 1 else x1
                # context stops `b` past the image edge, as it does for the whole image
                wy0, wx0 = max(y0 - ov, -b), max(x0 - ov, -b)
                wy1 = wy0 + _round_up(min(y1 + ov, self.height + b) - wy0, self.multiple)
                wx1 = wx0 + _round_up(min(x1 + ov, self.width + b) - wx0, self.multiple)
                yield Tile(i, r, (y0, x0, y1, x1), (sy0, sx0, sy1, sx1), (wy0, wx0, wy1, wx1))
                i += 1

    def weights(self, tile: Tile) -> np.ndarray:
        """Blend weights over `tile.support`, shape (h, w), float32; all tiles sum to 1."""
        sy0, sx0, sy1, sx1 = tile.support
        y0, x0, y1, x1 = tile.core
        wy = _ramp(sy0, sy1, y0, y1, self.feather)
        wx = _ramp(sx0, sx1, x0, x1, self.feather)
        return (wy[:, None] * wx[None, :]).astype(np.float32)

    def rows_done_before(self, row: int) -> int:
        """Image rows that are final once tile rows < `row` are accumulated."""
        if row >= self.rows:
            return self.height
        return max(0, self.ys[row] - self.feather)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _ramp(s0: int, s1: int, c0: int, c1: int, f: int) -> np.ndarray:
    """1 on [c0, c1), linear over the 2f band around each inner core edge, 0 outside support."""
    p = np.arange(s0, s1, dtype=np.float64) + 0.5
    w = np.ones(s1 - s0)
    if f > 0:
        if s0 < c0:  # left neighbour: rise over [c0 - f, c0 + f)
            w = np.minimum(w, np.clip((p - (c0 - f)) / (2 * f), 0, 1))
        if s1 > c1:  # right neighbour: fall over [c1 - f, c1 + f)
            w = np.minimum(w, np.clip(((c1 + f) - p) / (2 * f), 0, 1))
    return w


def make_grid(height: int, width: int, *, tile: int, overlap: int, multiple: int = 1,
              feather: int | None = None, border: int | None = None) -> TileGrid:
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    if tile < 1:
        raise ValueError("tile size must be positive")
    if overlap < 0:
        raise ValueError("overlap must be >= 0")
    multiple = max(1, multiple)
    overlap = _round_up(overlap, multiple)
    border = overlap if border is None else min(overlap, _round_up(max(0, border), multiple))
    core = _round_up(tile, multiple)
    want: int = min(16, overlap // 2) if feather is None else feather

    def bounds(n: int) -> tuple[int, ...]:
        if core >= n:
            return (0, n)
        k = math.ceil(n / core)
        step = _round_up(math.ceil(n / k), multiple)
        cuts = list(range(0, n, step)) + [n]
        if len(cuts) > 2 and cuts[-1] - cuts[-2] < 2 * want + 1:
            cuts.pop(-2)
        return tuple(cuts)

    ys, xs = bounds(height), bounds(width)
    min_core = min(min(b - a for a, b in zip(ys, ys[1:])), min(b - a for a, b in zip(xs, xs[1:])))
    feather = max(0, min(want, overlap, (min_core - 1) // 2))
    return TileGrid(height, width, tile, overlap, feather, multiple, ys, xs, border)


def mirror_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices start..stop-1 mapped into [0, n) by mirroring (edge sample repeated), any distance."""
    i = np.arange(start, stop) % (2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def read_window(image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The window's pixels from an (H, W, ...) array, mirrored where it leaves the image."""
    y0, x0, y1, x1 = window
    h, w = image.shape[:2]
    if 0 <= y0 and y1 <= h and 0 <= x0 and x1 <= w:
        return image[y0:y1, x0:x1]
    rows, cols = mirror_indices(y0, y1, h), mirror_indices(x0, x1, w)
    r0, c0 = int(rows.min()), int(cols.min())  # gather from the bounding box, not whole rows
    box = image[r0:int(rows.max()) + 1, c0:int(cols.max()) + 1]
    box = box[y0 - r0:y1 - r0] if 0 <= y0 and y1 <= h else np.take(box, rows - r0, axis=0)
    return box[:, x0 - c0:x1 - c0] if 0 <= x0 and x1 <= w else np.take(box, cols - c0, axis=1)


def run_tiles(image: np.ndarray, grid: TileGrid, run: Callable[[np.ndarray], np.ndarray], channels: int,
              put_rows: Callable[[int, np.ndarray], None], *, progress: ProgressFn | None = None,
              cancel: CancelFn | None = None) -> None:
    """The tile loop. For each tile of `grid` over `image` (H, W, ...): `run` maps the tile's window
    (`read_window`: the context around it, mirrored past the image edge) to the model's output over
    that window, (wh, ww, channels) float32. The output's support is blended into a float band of
    rows with the grid's weights, and every band of rows that no later tile touches is handed to
    `put_rows(y0, rows)` (float32 (n, W, channels)), top to bottom, so only a few tile rows of float
    output are held at once. `cancel()` is asked before each tile (True raises `Cancelled`);
    `progress(done, total)` is called after each."""
    width = grid.width
    band = np.zeros((0, width, channels), np.float32)  # float accumulator for rows not yet final
    band_y0 = 0
    total = len(grid)
    for t in grid:
        if cancel is not None and cancel():
            raise Cancelled("denoising cancelled")
        y = run(read_window(image, t.window))
        sy0, sx0, sy1, sx1 = t.support
        oy, ox = sy0 - t.window[0], sx0 - t.window[1]
        pred = y[oy:oy + sy1 - sy0, ox:ox + sx1 - sx0]
        if sy1 - band_y0 > band.shape[0]:
            band = np.concatenate([band, np.zeros((sy1 - band_y0 - band.shape[0], width, channels), np.float32)])
        band[sy0 - band_y0:sy1 - band_y0, sx0:sx1] += pred * grid.weights(t)[..., None]
        if t.core[3] == width:  # the last tile of its row
            done = grid.rows_done_before(t.row + 1)
            if done > band_y0:
                put_rows(band_y0, band[:done - band_y0])
                band = band[done - band_y0:].copy()
                band_y0 = done
        if progress is not None:
            progress(t.index + 1, total)
