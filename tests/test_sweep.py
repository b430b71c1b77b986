"""Sweeps without a cluster: grids expanded into lines with stable ids (the Slurm side is tests/test_slurm.py)."""


def test_linked_sweep_axis_sets_fields_together(tmp_path):
    from distbench.sweep import expand

    grid = tmp_path / "g.toml"
    grid.write_text(
        '[axes]\n"model.head" = ["learned", "fixed-srht"]\n'
        'budget = [{"model.num_classes" = 10, "train.steps" = 3}, {"model.num_classes" = 20, "train.steps" = 5}]\n'
    )
    lines, warnings = expand(grid)
    assert not warnings
    got = sorted(
        (x["config"]["model"]["head"], x["config"]["model"]["num_classes"], x["config"]["train"]["steps"])
        for x in lines
    )
    assert got == [("fixed-srht", 10, 3), ("fixed-srht", 20, 5), ("learned", 10, 3), ("learned", 20, 5)]


def test_a_signal_while_a_line_starts_stops_the_walk_and_records_nothing(tmp_path):
    """SIGTERM reaching `sweep run-all` while a line's torchrun starts, before torchrun handles signals (held
    there by a sitecustomize until a signal ends it), ends that torchrun at once: the line is stopped, not failed
    (no record), and the walk ends with exit 75 without starting the next line. It once recorded the line as
    failed ("exit status -15") and went on."""
    import contextlib
    import json
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT, _env, wait_for

    hold, started = tmp_path / "hold", tmp_path / "torchrun-started"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "if any(a.endswith('torchrun') for a in sys.orig_argv[:2]):\n"
        f"    with open({str(started)!r}, 'a') as f: f.write(f'{{os.getpid()}}\\n')\n"
        "    signal.pause()  # a torchrun that has not yet installed its handlers\n"
    )
    grid, sweep, out = tmp_path / "grid.toml", tmp_path / "sweep.jsonl", tmp_path / "runs.jsonl"
    grid.write_text((ROOT / "launch" / "sweeps" / "smoke.toml").read_text().replace("[10, 20]", "[10]"))
    sweep_py = [sys.executable, str(ROOT / "launch" / "sweep.py")]
    cmd = [*sweep_py, "expand", str(grid), "-o", str(sweep), "--results", str(out)]
    assert subprocess.run(cmd, env=_env(), check=False).returncode == 0
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(hold), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [*sweep_py, "run-all", str(sweep)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(started.exists, what="the first line's torchrun to start", proc=proc)
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=120)
    finally:  # a failing sweep may leave held torchruns (each in its own session) behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in started.read_text().split() if started.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    assert proc.returncode == 75, log[-3000:]
    assert log.count("\nrun ") + log.startswith("run ") == 1 and "stopped " in log, log[-3000:]
    assert not out.exists() or not [json.loads(x) for x in out.read_text().splitlines()], "a record was written"
