#!/usr/bin/env bash
# Why the tiny recipe gave back a noisy ghost on real clips: the 2 × 2 of prediction target (ε, v) and expression
# condition (per frame, 25-frame average), each a short `emodiff real-clips` run at 32 px on the same split, scored on
# the held-out seconds. Usage: scripts/real_clips_diagnosis.sh CLIPS_FOLDER OUT [STEPS]
# (README, "Training on your own clips"; about 12 min per variant on one core at the default 600 steps).
set -euo pipefail
clips=$1 out=$2 steps=${3:-600}
mkdir -p "$out"
first=""
for prediction in epsilon v_prediction; do
    for smoothing in 0 25; do
        run="$out/${prediction}_smooth${smoothing}"
        if [ -n "$first" ] && [ ! -d "$run/store_train" ]; then  # one split and prepare serves every variant
            mkdir -p "$run" && cp -r "$first/split" "$first/store_train" "$first/store_heldout" "$run/"
        fi
        emodiff real-clips "$clips" --out "$run" --set denoiser.data.resolution=32 \
            denoiser.train.max_steps="$steps" denoiser.diffusion.prediction_type="$prediction" \
            denoiser.data.expression_smoothing="$smoothing" > "$run.log" 2>&1
        first=${first:-$run}
    done
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
print("| prediction | expression condition | PSNR | SSIM | M-LMD | mouth r | drift (dB) |")
print("|---|---|---|---|---|---|---|")
for run in sorted(Path(sys.argv[1]).glob("*_smooth*")):
    if not (run / "report" / "metrics.json").is_file():
        continue
    m = json.loads((run / "report" / "metrics.json").read_text())["metrics"]["model"]
    prediction, smoothing = run.name.rsplit("_smooth", 1)
    cells = [f"{m[k]:.3f}" if k in m else "–" for k in ("psnr", "ssim", "m_lmd", "mouth_r", "psnr_drift")]
    print(f"| {prediction} | {'per frame' if smoothing == '0' else smoothing + '-frame average'} | " + " | ".join(cells) + " |")
PY
