"""profile.png: the kernel profile as a picture, a bar per kernel of its measured time with its
roofline time drawn inside it, so the gap that tuning could close is what the eye sees first.

Drawn with Pillow (already needed for calibration images), like sqnr.png, rather than a
plotting library. Time is linear: the longest bars are where the time goes.
"""

from __future__ import annotations

from pathlib import Path

ROW = 18
TOP = 46
LEFT = 340  # room for kernel names
WIDTH = 1020
RIGHT_TEXT = 170  # room for "12.345 ms  31% peak"
MAX_ROWS = 30  # the rest summed in one row
MEASURED = (66, 133, 244)
ROOFLINE = (13, 59, 120)
OVERHEAD = (150, 150, 150)
OTHERS = "(%d more kernels)"


def bar_width(ms: float, longest_ms: float) -> int:
    """Pixels of a bar of `ms` when the longest bar is `longest_ms`."""
    span = WIDTH - LEFT - RIGHT_TEXT
    return int(round(span * max(0.0, ms) / longest_ms)) if longest_ms > 0 else 0


def _rows_to_draw(rows: list[dict]) -> list[dict]:
    """The slowest MAX_ROWS rows, then one row summing the rest."""
    rows = sorted(rows, key=lambda r: r["ms"], reverse=True)
    if len(rows) <= MAX_ROWS:
        return rows
    head, tail = rows[: MAX_ROWS - 1], rows[MAX_ROWS - 1 :]
    rest = {
        "name": OTHERS % len(tail),
        "ms": sum(r["ms"] for r in tail),
        "roofline_ms": sum(r.get("roofline_ms") or 0.0 for r in tail) or None,
        "peak_fraction": None,
    }
    return [*head, rest]


def write_profile_plot(profile: dict, path: Path, title: str) -> Path:
    """Draw `profile` (profile_kernels' dict: "rows" with name, ms, roofline_ms,
    peak_fraction) to `path`."""
    from PIL import Image, ImageDraw

    from edgepress.compiler.kernel_profile import VM_OVERHEAD

    rows = _rows_to_draw(profile["rows"])
    longest = max((r["ms"] for r in rows), default=0.0)
    height = TOP + ROW * max(1, len(rows)) + 40
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black")
    draw.rectangle((LEFT, 26, LEFT + 10, 34), fill=MEASURED)
    draw.text((LEFT + 14, 24), "measured time", fill="black")
    draw.rectangle((LEFT + 130, 26, LEFT + 140, 34), fill=ROOFLINE)
    draw.text((LEFT + 144, 24), "roofline time (its FLOPs at the CPU's peak)", fill="black")
    for i, row in enumerate(rows):
        y = TOP + i * ROW
        name = row["name"]
        draw.text((8, y + 3), name if len(name) <= 50 else "..." + name[-47:], fill="black")
        end = LEFT + max(1, bar_width(row["ms"], longest))
        colour = OVERHEAD if name == VM_OVERHEAD else MEASURED
        draw.rectangle((LEFT, y + 3, end, y + ROW - 3), fill=colour)
        roof = row.get("roofline_ms")
        if roof:
            draw.rectangle(
                (LEFT, y + 6, LEFT + max(1, bar_width(min(roof, row["ms"]), longest)), y + ROW - 6),
                fill=ROOFLINE,
            )
        label = f"{row['ms']:.3f} ms"
        if row.get("peak_fraction"):
            label += f"  {row['peak_fraction']:.0%} peak"
        draw.text((end + 6, y + 3), label, fill="black")
    axis = TOP + ROW * len(rows) + 2
    draw.line((LEFT, TOP - 2, LEFT, axis), fill="black")
    draw.line((LEFT, axis, LEFT + bar_width(longest, longest), axis), fill="black")
    draw.text((LEFT - 4, axis + 4), "0", fill="black")
    draw.text((LEFT + bar_width(longest, longest) - 40, axis + 4), f"{longest:.3f} ms", fill="black")
    image.save(path)
    return path
