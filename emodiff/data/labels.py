"""Emotion vocabulary and MEAD-style label parsing (docs/design.md §3)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from emodiff.errors import EmodiffError

EMOTIONS: tuple[str, ...] = (
    "neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised",
)
NEUTRAL = 0

_MEAD_DIR = re.compile(
    r"(?P<identity>[MW]\d{3})/video/[^/]+/(?P<emotion>[a-z]+)/level_(?P<level>\d)/[^/]+$"
)
_MEAD_FLAT = re.compile(r"^(?P<identity>[A-Za-z]+\d+)_(?P<emotion>[a-z]+)_(?P<level>\d)_[^/]+$")


@dataclass(frozen=True)
class Label:
    identity: str | None
    emotion: str | None
    level: int | None


def emotion_index(name: str) -> int:
    """Index of an emotion name in EMOTIONS; unknown names raise a sentence listing the valid ones."""
    key = name.strip().lower()
    if key not in EMOTIONS:
        raise EmodiffError(f"Unknown emotion '{name}'; valid emotions are: {', '.join(EMOTIONS)}.")
    return EMOTIONS.index(key)


def parse_label(path: str | Path) -> Label:
    """Identity / emotion / level from a MEAD layout (`M003/video/front/angry/level_3/001.mp4`)
    or a flattened name (`M003_angry_3_001.mp4`); anything else has no label."""
    p = Path(path).as_posix()
    for pattern, text in ((_MEAD_DIR, p), (_MEAD_FLAT, Path(p).name)):
        m = pattern.search(text)
        if m and m["emotion"] in EMOTIONS:
            return Label(m["identity"], m["emotion"], int(m["level"]))
    return Label(None, None, None)
