"""Several runs in one torchrun job: `distbench.runtime.loop.run` once per config, rank 0 appending each record.

Each run is what launch/run.py does between its checks and its record (the same train.run, the same engines,
meters and process group), without paying for a new job's imports and rendezvous every time: the tests that
check many configurations for their bytes share one job (conftest.torchrun_many).

    torchrun --nproc_per_node=2 tests/helpers/many_runs.py OUT CONFIGS.json    # CONFIGS: a list of argv lists
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distbench import results
from distbench.runtime import checks, loop
from distbench.runtime.engines import close_distributed
from distbench.runtime.stop import StopRequest


def main(out: str, configs: str) -> int:
    rank0, world = os.environ.get("RANK", "0") == "0", int(os.environ.get("WORLD_SIZE", "1"))
    try:
        for argv in json.loads(Path(configs).read_text()):
            cfg = checks.parse_and_check([*argv, "--out", out], world_size=world)
            record = loop.run(cfg, StopRequest())  # a request of its own: no handlers, phases from scratch
            if rank0:
                results.append(out, record)
    finally:
        close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
