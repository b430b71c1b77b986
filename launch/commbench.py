"""Collective micro-benchmark (nccl-tests style; distbench.perfmodel.commbench): parse -> run -> write -> close.

torchrun --nproc_per_node=2 launch/commbench.py --max-bytes 4M
torchrun --nproc_per_node=8 launch/commbench.py --ops all_reduce        # nccl on GPUs, gloo on CPU
python launch/commbench.py --help

On a shared machine prefer many one-call windows, e.g. --iters 1 --repeats 200: each record keeps the
median (time_us) and the fastest window (time_us_min), and the rounds over sizes spread the load alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distbench.perfmodel.commbench import main

if __name__ == "__main__":
    sys.exit(main())
