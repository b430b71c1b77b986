"""Projecting to GPU clusters: NCCL's collective algorithms and interconnect presets (`nccl.py`), cost models
fitted to measured collectives (`costmodel.py`, `commbench.py`), the planner (`plan.py`) and the counts table
(`counts.py`). Models are built on the meta device; no process group is started."""
