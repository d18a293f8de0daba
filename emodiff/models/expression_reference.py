"""The stored neutral and per-emotion target expressions e_n, e_y of a pipeline without an expression generator
(EMOdiffhead eq. 14–15, docs/design.md §5.3)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from emodiff.data.expression import strongest_level_expressions
from emodiff.data.labels import EMOTIONS
from emodiff.data.store import ClipStore
from emodiff.errors import EmodiffError


class ExpressionReference(ModelMixin, ConfigMixin):
    """The neutral expression e_n (D,) and one target expression e_y (D,) per emotion (eq. 14–15).

    They are e_n and e_y when the pipeline has no expression generator (with one, G synthesises both).
    `emotions` names the emotions the training store has (None: every emotion, as pipelines saved before it
    was recorded); `neutral_source` says where e_n came from ("neutral clips" or "calmest frames").
    """

    @register_to_config
    def __init__(self, expression_dim: int = 50, num_emotions: int = len(EMOTIONS), emotions: list[str] | None = None,
                 neutral_source: str = "neutral clips") -> None:
        super().__init__()
        self.register_buffer("neutral", torch.zeros(expression_dim))
        self.register_buffer("targets", torch.zeros(num_emotions, expression_dim))

    @classmethod
    def from_store(cls, store: ClipStore) -> "ExpressionReference":
        """e_n = mean expression of the neutral clips; e_y = mean expression of emotion y at its strongest level.

        A store without neutral clips (HDTF-style or emotional-only data) takes e_n from the reference `emodiff
        prepare` uses for its pseudo intensity there: the mean of each clip's calmest 10 % of frames.
        """
        neutral, targets = strongest_level_expressions(store)
        has_neutral = any(store.clip(i).emotion == "neutral" for i in store.clip_ids())
        present = [name for name in EMOTIONS if name == "neutral" or name in targets]
        reference = cls(expression_dim=len(neutral), emotions=present,
                        neutral_source="neutral clips" if has_neutral else "calmest frames")
        reference.neutral.copy_(torch.from_numpy(neutral.astype(np.float32)))
        for e, name in enumerate(EMOTIONS):
            reference.targets[e].copy_(torch.from_numpy(targets.get(name, neutral).astype(np.float32)))
        return reference

    def check_emotions(self, emotion_weights: np.ndarray) -> None:
        """Refuse, in one sentence, an emotion (a column of the (T, E) weights in use) the store had no clips of."""
        known = self.config.emotions
        if known is None:
            return
        missing = [EMOTIONS[e] for e in np.flatnonzero(np.asarray(emotion_weights).any(0)) if EMOTIONS[e] not in known]
        if missing:
            raise EmodiffError(f"This pipeline was trained without {', '.join(missing)} clips, so it cannot show "
                               f"{' or '.join(missing)}; it knows: {', '.join(known)}.")
