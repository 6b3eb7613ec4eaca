"""Pictures laid out in pixels: each tile lands at a known place at its own size (an image is pasted pixel
for pixel), matplotlib's Agg renderer adds the text and the bars, and the PNG is written atomically.
No pyplot: nothing here touches matplotlib's global state."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write

DPI = 100
FONT = 8  # points: 11 pixels at DPI
LINE = 13  # pixels per line of caption text


@dataclass(frozen=True)
class Grid:
    """A picture's layout in pixels: rows × columns of equal tiles `gap` apart, a band of `below` pixels
    under each tile (captions, bars), a `header` band above them all and a `margin` around everything."""

    rows: int
    columns: int
    tile: tuple[int, int]  # (height, width)
    gap: int = 6
    below: int = 0
    header: int = 0
    margin: int = 8

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole picture."""
        h, w = self.tile
        return (2 * self.margin + self.header + self.rows * (h + self.below) + (self.rows - 1) * self.gap,
                2 * self.margin + self.columns * w + (self.columns - 1) * self.gap)

    def origin(self, row: int, column: int) -> tuple[int, int]:
        """(top, left) of the tile at (row, column)."""
        h, w = self.tile
        return (self.margin + self.header + row * (h + self.below + self.gap), self.margin + column * (w + self.gap))


class Canvas:
    """A white RGB picture of exact pixel size: pasted images, text and axes, saved as a PNG."""

    def __init__(self, height: int, width: int):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.pixels = np.full((height, width, 3), 255, np.uint8)
        # a hundredth of a pixel more, so that rounding down in the backend cannot lose a row
        self.figure = Figure(figsize=((width + 0.01) / DPI, (height + 0.01) / DPI), dpi=DPI)
        FigureCanvasAgg(self.figure)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[:2]

    def paste(self, top: int, left: int, image: np.ndarray) -> None:
        """Put a uint8 (h, w, 3) image with its top-left corner at (top, left)."""
        h, w = image.shape[:2]
        self.pixels[top:top + h, left:left + w] = image

    def text(self, top: int, left: int, text: str, size: float = FONT, **kw) -> None:
        """Text whose top-left corner is at (top, left)."""
        h, w = self.size
        self.figure.text(left / w, 1 - top / h, text, fontsize=size, va="top", ha="left", **kw)

    def axes(self, top: int, left: int, height: int, width: int):
        """Matplotlib axes over the given rectangle."""
        h, w = self.size
        return self.figure.add_axes((left / w, 1 - (top + height) / h, width / w, height / h))

    def save(self, path: str | Path) -> Path:
        """Write the PNG through a temporary file (created with its folder where missing)."""
        path = Path(path)
        self.figure.figimage(self.pixels, xo=0, yo=0, origin="upper", zorder=-1)
        atomic_write(path, lambda f: self.figure.savefig(f, dpi=DPI, format="png"))
        return path


def shown(path: str | Path) -> str:
    """A path as a caption shows it: relative to the current folder when it lies inside, else its last two parts
    (a run's folder and its checkpoint), never a temporary folder's whole path."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*path.parts[-2:]))


def fit(text: str, width: int, char: int = 6) -> str:
    """Shorten `text` to what fits in `width` pixels of caption (about `char` pixels a character)."""
    most = max(4, width // char)
    return text if len(text) <= most else text[:most - 1] + "…"


def center(image: np.ndarray, crop: int) -> np.ndarray:
    """The central crop×crop patch of a preprocessed side×side image, as the network sees it (before the mean)."""
    mid = (image.shape[0] - crop) // 2
    return image[mid:mid + crop, mid:mid + crop]
