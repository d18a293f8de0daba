"""Training loops, one per stage, each driven by a YAML config and runnable under accelerate."""
