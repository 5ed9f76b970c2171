#!/usr/bin/env bash
# Rebuild the corpus the bundled compact model was trained and measured on (docs/MODEL_CARD.md).
# Needs root for apt and the project's .venv (bash scripts/setup.sh train). Writes ./corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
apt-get install -y -qq --no-install-recommends plasma-workspace-wallpapers mate-backgrounds \
  lomiri-wallpapers-16.04 lxqt-themes >/dev/null
mkdir -p corpus/heldout corpus/train_v1 corpus/skimage
# 1. Curation over every image file of the four packages: stage (i) thresholds (flat, blurred)
#    and stage (ii) (blur, noise) reject; --keep-fraction 1.0 keeps every photo that passes.
find /usr/share/wallpapers /usr/share/backgrounds /usr/share/lxqt -type f \
  \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort > corpus/candidates.txt
op4ksr curate $(cat corpus/candidates.txt) --out corpus/manifest_v1.jsonl --keep-fraction 1.0 --overwrite
# 2. v1.0 training photos: kept, long side ≥ 1024, one size per scene, no held-out scene
#    (the committed list is configs/corpus/train_photos_v1.txt; this reproduces it).
python scripts/select_photos.py corpus/manifest_v1.jsonl configs/corpus/heldout_photos.txt \
  | diff - configs/corpus/train_photos_v1.txt
while read -r p; do ln -sfn "$p" "corpus/train_v1/$(echo "$p" | sed 's#/usr/share/##; s#/#_#g')"; done \
  < configs/corpus/train_photos_v1.txt
# scikit-image's colour photos (astronaut and chelsea are left out: they are the bundled examples)
python - <<'PY'
import skimage.data as d
from PIL import Image
for name in ("coffee", "rocket"):
    Image.fromarray(getattr(d, name)()).save(f"corpus/skimage/{name}.png")
Image.fromarray(d.stereo_motorcycle()[0]).save("corpus/skimage/motorcycle_left.png")
PY
# The held-out photos (configs/corpus/heldout_photos.txt) are never trained on.
while read -r p; do ln -sfn "$p" "corpus/heldout/$(echo "$p" | sed 's#/usr/share/##; s#/#_#g')"; done \
  < configs/corpus/heldout_photos.txt
# v0.1–v0.3 trained on 512-px tiles of 17 photos (configs/corpus/train_photos.txt):
op4ksr make-tiles $(cat configs/corpus/train_photos.txt) --out corpus/tiles512 --size 512 --stride 512
# 3. Benchmark suites from the held-out photos: heavy (osediff), mild (clean bicubic, JPEG q60–90), real.
op4ksr make-bench syn corpus/heldout --out corpus/bench/syn1024 --long-side 1024 --preset osediff --seed 0
op4ksr make-bench mild corpus/heldout --out corpus/bench/mild1024 --long-side 1024 --seed 0
op4ksr make-bench realvary corpus/heldout --out corpus/bench/realvary256 --size 256
