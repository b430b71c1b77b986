"""Data-parallel engines: the only place that talks to process groups (`base.py`: the Engine interface, the
process group, the stop vote, the small host-side collectives the loop needs). Each engine (DDP, FSDP2,
DeepSpeed) registers itself in ENGINES when this package is imported; `distbench.runtime.loop` drives one
and never touches torch.distributed itself.
"""

from distbench.runtime.engines import ddp, deepspeed, fsdp  # noqa: F401  (registration; no deepspeed import yet)
from distbench.runtime.engines.base import *  # noqa: F403  (the package's API is base's __all__)
from distbench.runtime.engines.base import __all__  # noqa: F401
