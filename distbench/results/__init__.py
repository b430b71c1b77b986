"""Results: the record's schema (`schema.py`), where records are written and read (`store.py`), the tables
notebooks start from (`analysis.py`) and the figures and README tables made from records (`report.py`).

The package's own API is the schema and the store, named here so that callers write `results.append` and
`results.load` whichever module holds them.
"""

from distbench.results.schema import ADDED, SCHEMA, SKIPPED_SHOWN, SPEC, STATUSES, SchemaError, check_fields, validate
from distbench.results.store import (
    append,
    bounded,
    environment,
    failed_record,
    finite,
    git_sha,
    load,
    new_run_id,
    now,
    portable,
    read_records,
)

__all__ = [
    "ADDED",
    "SCHEMA",
    "SKIPPED_SHOWN",
    "SPEC",
    "STATUSES",
    "SchemaError",
    "append",
    "bounded",
    "check_fields",
    "environment",
    "failed_record",
    "finite",
    "git_sha",
    "load",
    "new_run_id",
    "now",
    "portable",
    "read_records",
    "validate",
]
