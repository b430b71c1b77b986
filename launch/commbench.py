"""Collective micro-benchmark (nccl-tests style): parse -> run -> write -> close.

torchrun --nproc_per_node=2 launch/commbench.py --max-bytes 4M
torchrun --nproc_per_node=8 launch/commbench.py --ops all_reduce        # nccl on GPUs, gloo on CPU
python launch/commbench.py --help

On a shared machine prefer many one-call windows, e.g. --iters 1 --repeats 200: each record keeps the
median (time_us) and the fastest window (time_us_min), and the rounds over sizes spread the load alike.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distbench import config, results
from distbench.perfmodel import commbench

log = logging.getLogger("distbench")


def main(argv: list[str] | None = None) -> int:
    rank0 = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s")
    try:
        args = commbench.parse_args(argv)
    except commbench.ArgsError as e:
        return config.fail(e, prog="commbench.py", quiet=not rank0)

    from distbench.runtime.engines import close_distributed, init_distributed

    def write(record: dict) -> None:
        results.append(args.out, record, check=commbench.validate_commbench)
        log.info(commbench.table_row(record))

    try:
        place = init_distributed(args.dist_backend)
        if place.rank == 0:
            log.info(
                "# %d ranks, %s on %s\n%s", place.world_size, place.backend, place.device, commbench.table_header()
            )
        records = commbench.run_commbench(
            place,
            args.ops,
            args.sizes,
            args.iters,
            args.warmup,
            repeats=args.repeats,
            run_id=args.run_id,
            on_record=write if place.rank == 0 else None,
        )
    finally:
        close_distributed()
    if place.rank == 0:
        log.info("# %d records appended to %s (run_id %s)", len(records), args.out, records[0]["run_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
