"""Running one configuration: the engines (process groups, wrapping, one optimizer step), the training loop,
data, checkpoints, timing, and what a signal means at each moment (`stop.py`, importable before torch)."""
