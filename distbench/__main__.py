"""`python -m distbench`, and `torchrun -m distbench run ...` for several ranks: the `distbench` command."""

import sys

from distbench.cli import main

sys.exit(main())
