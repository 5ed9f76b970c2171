"""Pick the training photos of the compact model from a curation manifest (docs/MODEL_CARD.md).

Kept rows only, long side ≥ 1024 (drops the packages' thumbnails), one file per scene (the
largest; KDE wallpapers ship one folder per scene with many sizes), and no scene of the
held-out list. Prints the chosen paths, one per line, sorted by scene.

    python scripts/select_photos.py corpus/manifest_v1.jsonl configs/corpus/heldout_photos.txt
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MIN_LONG_SIDE = 1024


def scene(path: str) -> str:
    """``/usr/share/wallpapers/<Scene>/contents/images/WxH.jpg`` → Scene; else the stem without a size."""
    match = re.match(r"/usr/share/wallpapers/([^/]+)/", path)
    return match.group(1) if match else re.sub(r"[_-]?\d{3,5}x\d{3,5}", "", Path(path).stem)


def select(manifest: Path, heldout: Path) -> list[str]:
    held = {scene(line.strip()) for line in heldout.read_text().splitlines() if line.strip()}
    best: dict[str, dict] = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row.get("status") != "kept" or max(row["width"], row["height"]) < MIN_LONG_SIDE:
            continue
        name = scene(row["path"])
        if name in held:
            continue
        if name not in best or row["width"] * row["height"] > best[name]["width"] * best[name]["height"]:
            best[name] = row
    return [best[name]["path"] for name in sorted(best)]


if __name__ == "__main__":
    print("\n".join(select(Path(sys.argv[1]), Path(sys.argv[2]))))
