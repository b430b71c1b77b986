"""Data-parallel engines: the only place that talks to process groups (`base.py`: the Engine interface, the
process group, the stop vote). Each engine (DDP, FSDP2, DeepSpeed) registers itself in ENGINES when this
package is imported; `distbench.runtime.loop` drives one and never touches torch.distributed itself.
"""

from distbench.runtime.engines import ddp, deepspeed, fsdp  # noqa: F401  (registration; no deepspeed import yet)
from distbench.runtime.engines.base import (
    ENGINES,
    Engine,
    Place,
    StopVote,
    all_reduce,
    barrier,
    build_engine,
    close_distributed,
    gather_objects,
    init_distributed,
    replicas_identical,
)

__all__ = [
    "ENGINES",
    "Engine",
    "Place",
    "StopVote",
    "all_reduce",
    "barrier",
    "build_engine",
    "close_distributed",
    "gather_objects",
    "init_distributed",
    "replicas_identical",
]
