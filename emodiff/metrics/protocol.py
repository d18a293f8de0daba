"""`emodiff evaluate protocol`: write the inputs of a test protocol so every pipeline runs on the same ones.

From a MEAD-style source (`M003/video/front/happy/level_3/001.mp4` or `M003_happy_3_001.mp4`), for the test
identities (default: M003, M030, W009, W015, the MEAD test split of EAMM and EAT) at one level, each video
becomes an item `<identity>_<emotion>_<level>_<clip>`:
  inputs/<item>.png       the first frame (the one-shot identity image; pipelines crop it their own way),
  inputs/<item>.wav       its speech, 16 kHz mono,
  reference/<item>.mp4    the ground-truth video, with reference/<item>.json {"emotion", "identity", "series": item,
                          "intensity": 1 at MEAD's strongest level 3 (k = 1 is the strongest level's expression), 0 for
                          neutral} — Intensity-L2's measure is fitted on these;
and for every emotional item an intensity sweep `<item>_k<k>` (same image and audio, `--sweep` levels) whose
reference/<item>_k<k>.json carries {"emotion", "identity", "intensity": k, "series": item} (no ground-truth
video; expression vectors are measured from the identity's neutral face fitted on the reference videos).
protocol.csv lists every item with its inputs. A pipeline writes `<item>.mp4` per row into its run folder;
then `emodiff evaluate --reference OUT/reference --run NAME=RUN_DIR …`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2

from emodiff.data.labels import parse_label
from emodiff.data.store import write_wav
from emodiff.files import atomic_path, copy_atomic, write_json_atomic, write_text_atomic
from emodiff.errors import EmodiffError

MEAD_TEST_IDENTITIES = ("M003", "M030", "W009", "W015")
DEFAULT_SWEEP = "0,0.25,0.5,0.75,1"
MEAD_STRONGEST_LEVEL = 3


def write_protocol(source: Path | None, out: Path, identities: list[str], level: int, sweep: str,
                   fps: float) -> int:
    """Write the protocol folder; returns the number of items (rows of protocol.csv)."""
    if source is None or not Path(source).is_dir():
        raise EmodiffError("evaluate protocol needs --source, an existing MEAD folder.")
    try:
        ks = [float(k) for k in sweep.split(",")]
    except ValueError as err:
        raise EmodiffError(f"--sweep must be comma-separated numbers, got '{sweep}'.") from err
    if any(not 0 <= k <= 1 for k in ks):
        raise EmodiffError("Sweep intensities must lie in [0, 1].")
    wanted = {i.strip() for i in identities if i.strip()}
    videos = []
    for path in sorted(Path(source).rglob("*.mp4")):
        label = parse_label(path)
        if label.identity in wanted and label.level == level:
            videos.append((f"{label.identity}_{label.emotion}_{level}_{path.stem}", label.identity, label.emotion, path))
    if not videos:
        raise EmodiffError(f"No level-{level} MEAD videos of {', '.join(sorted(wanted))} under {source}.")
    from emodiff.data.media import load_audio, read_video

    for sub in ("inputs", "reference"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for item, identity, emotion, path in videos:
        image, audio = out / "inputs" / f"{item}.png", out / "inputs" / f"{item}.wav"
        first = next(iter(read_video(path, fps)), None)
        if first is None:
            raise EmodiffError(f"{path} has no frames.")
        with atomic_path(image) as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(first, cv2.COLOR_RGB2BGR))
        with atomic_path(audio) as tmp:
            write_wav(tmp, load_audio(path))
        copy_atomic(path, out / "reference" / f"{item}.mp4")
        k = 0.0 if emotion == "neutral" else 1.0 if level == MEAD_STRONGEST_LEVEL else None
        write_json_atomic(out / "reference" / f"{item}.json", {"emotion": emotion, "identity": identity, "series": item,
                                                               **({} if k is None else {"intensity": k})})
        rows.append([item, image.relative_to(out), audio.relative_to(out), emotion, "" if k is None else k, item,
                     f"reference/{item}.mp4"])
        if emotion != "neutral":
            for k in ks:
                name = f"{item}_k{k:.2f}"
                write_json_atomic(out / "reference" / f"{name}.json",
                                  {"emotion": emotion, "identity": identity, "intensity": k, "series": item})
                rows.append([name, image.relative_to(out), audio.relative_to(out), emotion, k, item, ""])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["item", "identity_image", "audio", "emotion", "intensity", "series", "reference_video"])
    writer.writerows(rows)
    write_text_atomic(out / "protocol.csv", buffer.getvalue())
    return len(rows)
