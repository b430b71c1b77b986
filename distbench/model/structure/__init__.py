"""What a backbone learns and how: freeze rules (`freeze.py`) and conv parameterisations (`params.py`, whose
registry the parameterisations in `symmetric.py` and `dirac.py` join when this package is imported)."""

from distbench.model.structure import dirac, symmetric  # noqa: F401  (registration)
