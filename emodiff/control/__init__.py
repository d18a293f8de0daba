"""Emotion control: intensity interpolation (eq. 14–15) and its inverse, intensity schedules, emotion timelines."""

from emodiff.control.intensity import IntensityMeasure, interpolate_expression, parse_intensity
from emodiff.control.plot import plot_schedule
from emodiff.control.schedule import ScheduleOptions, frame_schedule
from emodiff.control.timeline import EmotionTimeline, expression_condition, parse_emotions

__all__ = ["IntensityMeasure", "interpolate_expression", "parse_intensity", "plot_schedule", "EmotionTimeline",
           "expression_condition", "parse_emotions", "ScheduleOptions", "frame_schedule"]
