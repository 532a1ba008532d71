"""Toy scenes: a grid of coloured squares and circles on white, drawn deterministically.

The counts per colour are the ground truth the toy questions ask about.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from prism_plugin.tiny.corpus import COLORS, SHAPES

RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
IMAGE_SIZE = 112
GRID = 4
FILL_PROBABILITY = 0.6


@dataclass(frozen=True)
class Scene:
    """Which shape (colour, kind) sits in which grid cell; empty cells are absent."""

    cells: tuple[tuple[int, int, str, str], ...]  # (row, col, colour, shape)

    def counts(self) -> dict[str, int]:
        """Number of shapes of each colour, every colour listed (zeros included)."""
        counts = dict.fromkeys(COLORS, 0)
        for _, _, color, _ in self.cells:
            counts[color] += 1
        return counts


def random_scene(rng: random.Random, grid: int = GRID) -> Scene:
    """A scene with each cell filled with probability ``FILL_PROBABILITY`` (at least one shape)."""
    cells = []
    for row in range(grid):
        for col in range(grid):
            if rng.random() < FILL_PROBABILITY:
                cells.append((row, col, rng.choice(COLORS), rng.choice(SHAPES)))
    if not cells:
        cells.append((0, 0, rng.choice(COLORS), rng.choice(SHAPES)))
    return Scene(tuple(cells))


def draw_scene(scene: Scene, size: int = IMAGE_SIZE, grid: int = GRID) -> Image.Image:
    """Render ``scene`` as an RGB image of ``size`` x ``size`` pixels."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = size // grid
    margin = max(2, cell // 6)
    for row, col, color, shape in scene.cells:
        box = (col * cell + margin, row * cell + margin, (col + 1) * cell - margin, (row + 1) * cell - margin)
        if shape == "circle":
            draw.ellipse(box, fill=RGB[color])
        else:
            draw.rectangle(box, fill=RGB[color])
    return image


def save_png(image: Image.Image, path: Path) -> Path:
    """Save ``image`` as a PNG without metadata (byte-identical for identical pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False, compress_level=6)
    return path
