"""distbench entry point: parse -> build -> run -> write.

torchrun --nproc_per_node=2 launch/run.py --head fixed
python launch/run.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# First, before anything slow: a signal during the imports must already mean "stop and say so".
from distbench.runtime.stop import REQUEST, Stopped

REQUEST.install()


def main(argv: list[str] | None = None) -> int:
    import logging
    import os

    from distbench import config
    from distbench.runtime.outcome import Outcome, already_recorded

    rank0 = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s")
    end = Outcome(REQUEST, argv, rank0)
    try:
        try:
            cfg = config.parse_args(argv)
            from distbench import checks  # imports torch

            checks.check(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        except config.ConfigError as e:
            return config.fail(e, quiet=not rank0)
        end.set_config(cfg)
        if cfg.output.dry_run:
            from distbench.runtime import loop

            print(loop.describe(cfg)) if rank0 else None
            return 0
        if (done := already_recorded(cfg)) is not None:
            print(done) if rank0 else None
            return 0
        from distbench.runtime import loop

        return end.finished(loop.run(cfg, REQUEST, end.run_id))
    except Stopped as e:
        return end.stopped(e)
    except config.ConfigError as e:  # found once running: a checkpoint that cannot be resumed from
        return config.fail(e, quiet=not rank0)
    except Exception as e:  # a run that broke after it started is recorded, not lost
        return end.failed(e)
    finally:
        end.close()
        REQUEST.settled()  # how this process ends is decided: a signal now must not turn it into a death


if __name__ == "__main__":
    sys.exit(main())
