"""emodiff: emotion-controllable, audio-driven talking-head generation by diffusion (EMOdiffhead)."""

__version__ = "0.1.0"
