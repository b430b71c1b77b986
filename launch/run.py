"""distbench entry point for torchrun: parse -> build -> run -> write (distbench.runtime.main).

torchrun --nproc_per_node=2 launch/run.py --head fixed
python launch/run.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# First, before anything slow: a signal during the imports must already mean "stop and say so".
from distbench.runtime.stop import REQUEST

REQUEST.install()

from distbench.runtime.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
