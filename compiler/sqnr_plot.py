"""sqnr.png: a bar per layer of the int8 model's SQNR against the float model, drawn with Pillow
(already needed for calibration images) rather than a plotting library."""

from __future__ import annotations

import math
from pathlib import Path

ROW = 16
LEFT = 260  # room for layer names
WIDTH = 760
GOOD_DB = 30.0  # a reference line: above it a layer's error is small next to its signal


def write_sqnr_plot(rows: list[tuple[str, float]], path: Path, title: str) -> Path:
    from PIL import Image, ImageDraw

    finite = [v for _, v in rows if math.isfinite(v)]
    top = max([GOOD_DB + 10, *finite]) if finite else GOOD_DB + 10
    height = 40 + ROW * max(1, len(rows)) + 30
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black")
    span = WIDTH - LEFT - 60

    def x_of(db: float) -> int:
        return LEFT + int(span * max(0.0, min(db, top)) / top)

    for i, (name, db) in enumerate(rows):
        y = 34 + i * ROW
        label = name if len(name) <= 38 else "..." + name[-35:]
        draw.text((8, y + 2), label, fill="black")
        end = x_of(db if math.isfinite(db) else top)
        colour = (46, 125, 50) if db >= GOOD_DB else (198, 40, 40)
        draw.rectangle((LEFT, y + 2, max(LEFT + 1, end), y + ROW - 3), fill=colour)
        draw.text((end + 4, y + 2), "inf" if math.isinf(db) else f"{db:.1f} dB", fill="black")
    axis = 34 + ROW * len(rows) + 4
    draw.line((LEFT, 30, LEFT, axis), fill="black")
    draw.line((x_of(GOOD_DB), 30, x_of(GOOD_DB), axis), fill=(120, 120, 120))
    draw.text((x_of(GOOD_DB) - 20, axis + 4), f"{GOOD_DB:.0f} dB", fill=(90, 90, 90))
    image.save(path)
    return path
