"""distbench sweeps (distbench.sweep): expand a TOML grid, list, run one line or all, or submit a Slurm array.

python launch/sweep.py expand launch/sweeps/heads.toml -o sweeps/heads.jsonl
python launch/sweep.py list sweeps/heads.jsonl
python launch/sweep.py run sweeps/heads.jsonl --index 3      # what one array task does
python launch/sweep.py run-all sweeps/heads.jsonl            # every line in turn, on this machine
python launch/sweep.py submit sweeps/heads.jsonl --parallel 8 [--dry-run] [-- SBATCH ARGS...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distbench.sweep import main

if __name__ == "__main__":
    sys.exit(main())
