"""distbench entry point: parse -> build -> run -> write.

torchrun --nproc_per_node=2 launch/run.py --head fixed
python launch/run.py --help
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distbench import checks, config, results

log = logging.getLogger("distbench")


def main(argv: list[str] | None = None) -> int:
    rank0 = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s")
    try:
        cfg = checks.parse_and_check(argv, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except config.ConfigError as e:
        return config.fail(e, quiet=not rank0)

    from distbench import train
    from distbench.checkpoint import EXIT_STOPPED, Stopped
    from distbench.engines import barrier, close_distributed

    if cfg.output.dry_run:
        print(train.describe(cfg)) if rank0 else None
        return 0
    started_at = results.now()
    try:
        record = train.run(cfg)
    except Stopped as e:  # a signal: every rank stopped at the same step boundary
        if rank0:
            log.warning("%s", e)
            if e.checkpoint is None:
                results.append(cfg.output.out, train.failed_record(cfg, e, started_at))
        barrier()  # rank 0's record is written before any rank exits and torchrun ends the others
        return EXIT_STOPPED
    except Exception as e:  # a run that broke after it started is recorded, not lost
        log.exception("run failed")
        if rank0:
            results.append(cfg.output.out, train.failed_record(cfg, e, started_at))
        return 1
    finally:
        close_distributed()
    if rank0:
        results.append(cfg.output.out, record)
        log.info("%s\n  record       appended to %s", train.summary(record), cfg.output.out)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
