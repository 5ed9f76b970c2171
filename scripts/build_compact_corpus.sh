#!/usr/bin/env bash
# Rebuild the corpus the bundled compact model was trained and measured on (docs/MODEL_CARD.md).
# Needs root for apt and the project's .venv (bash scripts/setup.sh train). Writes ./corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
apt-get install -y -qq --no-install-recommends plasma-workspace-wallpapers mate-backgrounds \
  lomiri-wallpapers-16.04 lxqt-themes >/dev/null
mkdir -p corpus/heldout
# 1. Curation over every candidate at least 1900 px wide (stage (i) keeps the top 50%).
find /usr/share/wallpapers /usr/share/backgrounds /usr/share/lxqt -type f \
  \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort > corpus/candidates.txt
op4ksr curate $(cat corpus/candidates.txt) --out corpus/manifest.jsonl --keep-fraction 0.5
# 2. The kept photos, one size per scene (configs/corpus/train_photos.txt), cut into 512-px tiles;
#    the held-out photos (configs/corpus/heldout_photos.txt) are never tiled or trained on.
op4ksr make-tiles $(cat configs/corpus/train_photos.txt) --out corpus/tiles512 --size 512 --stride 512
while read -r p; do ln -sfn "$p" "corpus/heldout/$(echo "$p" | sed 's#/usr/share/##; s#/#_#g')"; done \
  < configs/corpus/heldout_photos.txt
# 3. Benchmark suites from the held-out photos.
op4ksr make-bench syn corpus/heldout --out corpus/bench/syn1024 --long-side 1024 --preset osediff --seed 0
op4ksr make-bench realvary corpus/heldout --out corpus/bench/realvary256 --size 256
