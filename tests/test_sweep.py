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


CONTINUED = """\
[base.model]
model = "tiny"
[base.train]
warmup_steps = 1
nosync_steps = 0
batch_size = 8
[base.data]
eval_samples = 32
[launch]
nproc_per_node = 1
[sweep]
keep_checkpoints = true
[axes]
"train.steps" = [4, 9]
"""


def test_a_line_given_more_steps_goes_on_from_a_kept_shorter_line(tmp_path):
    """A sweep that keeps its checkpoints: the line of 9 steps, run after the same training of 4, goes on from
    that line's last checkpoint (step 5) instead of starting again; both records are the runs they say, and
    both checkpoints stay."""
    import json
    import subprocess
    import sys

    from conftest import ROOT, _env

    grid, sweep, out = tmp_path / "grid.toml", tmp_path / "sweep.jsonl", tmp_path / "runs.jsonl"
    grid.write_text(CONTINUED)
    sweep_py = [sys.executable, str(ROOT / "launch" / "sweep.py")]
    run = subprocess.run(
        [*sweep_py, "expand", str(grid), "-o", str(sweep), "--results", str(out)], env=_env(), capture_output=True,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    short, long = [json.loads(x) for x in sweep.read_text().splitlines()]
    assert short["keep_checkpoint"] and short["config"]["train"]["steps"] == 4
    run = subprocess.run(
        [*sweep_py, "run-all", str(sweep)], env=_env(), capture_output=True, text=True, timeout=300, check=False
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert f"continue {long['run_id']} from {short['run_id']} at step 5" in log, log[-3000:]
    records = {r["run_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {r["status"] for r in records.values()} == {"ok"}
    assert records[short["run_id"]]["perf"]["continued_from"] is None
    assert records[long["run_id"]]["perf"]["continued_from"] == short["run_id"]
    assert records[long["run_id"]]["perf"]["resumed_from_steps"] == [5]
    for line, step in ((short, 5), (long, 10)):
        latest = json.loads((tmp_path / "checkpoints" / line["run_id"] / "latest").read_text())
        assert latest["step"] == step and latest["run_id"] == line["run_id"] and latest["recorded"] == str(out)
    listed = subprocess.run([*sweep_py, "list", str(sweep)], env=_env(), capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines()[1].endswith("ok       checkpoint kept at step 10 of 10"), listed.stdout

    # Run again on purpose, a line starts afresh, not from its own kept (recorded) checkpoint.
    cmd = [*sweep_py, "run", str(sweep), "--index", "0", "--force"]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    again = [r for r in map(json.loads, out.read_text().splitlines()) if r["run_id"] == short["run_id"]]
    assert len(again) == 2 and again[-1]["perf"]["resumed_from_steps"] == [], (run.stdout + run.stderr)[-3000:]


def test_a_sweep_table_takes_only_what_it_knows(tmp_path):
    import pytest

    from distbench.sweep import SweepError, expand

    grid = tmp_path / "g.toml"
    for bad in ('[sweep]\nkeep_checkpoints = "yes"', "[sweep]\nkeep = true", "sweep = 1"):
        grid.write_text(f'{bad}\n[axes]\n"model.head" = ["learned"]\n')
        with pytest.raises(SweepError, match=r"\[sweep\] takes keep_checkpoints = true\|false"):
            expand(grid)
    grid.write_text('[axes]\n"model.head" = ["learned"]\n')
    assert "keep_checkpoint" not in expand(grid)[0][0]  # a line of a sweep that removes them, as before


def test_a_line_continues_only_the_same_training_on_as_many_ranks_before_its_end(tmp_path):
    """Which kept checkpoint a line without its own goes on from: of the same training on as many ranks, at a
    step it has not passed, the furthest; hard-linked, without the other run's record. Nothing else is taken."""
    import json
    import os

    from distbench.sweep import checkpoint_dir, continue_shorter, expand, progress

    grid = tmp_path / "grid.toml"
    grid.write_text(CONTINUED.replace("[4, 9]", "[4, 9, 20]"))
    (short, line, longer) = expand(grid, results=str(tmp_path / "runs.jsonl"))[0]  # ends at 5, 10 and 21

    def kept(name: str, source: dict, step: int, ranks: int = 1, reason: str = "end", end=None, **train) -> None:
        config = {**source["config"], "train": {**source["config"]["train"], **train}}
        directory = tmp_path / "checkpoints" / name / f"step-{step:08d}"
        directory.mkdir(parents=True)
        (directory / "loop-rank0.pt").write_text(name)
        latest = {"step": step, "dir": directory.name, "reason": reason, "world_size": ranks, "run_id": name}
        latest |= {"curve_end": end} if end else {}  # the last curve point, as Checkpoints.save writes it
        (directory.parent / "latest").write_text(json.dumps(latest | {"config": config, "recorded": "runs.jsonl"}))

    kept("two-ranks", short, 5, ranks=2)
    kept("other-lr", short, 5, lr=0.5)
    kept("past-the-end", longer, 12)  # the 20-step line, stopped at step 12: past the 9-step line's end
    kept("damaged", short, 5)
    damaged = tmp_path / "checkpoints" / "damaged" / "latest"
    damaged.write_text(damaged.read_text().replace('"train": {', '"train": [{').replace('}, "dist"', '}], "dist"'))
    ckpt = checkpoint_dir(line)
    assert continue_shorter(line) is None and not ckpt.exists() and progress(line, "pending") == ""
    kept("short", short, 5)
    point = {"step": 8, "samples_per_class": 0.56, "top1": 0.4, "top5": 0.9, "eval_loss": 2.5}
    kept("longer", longer, 8, reason="SIGTERM", end=point)  # stopped at 8: the furthest the 9-step line may take
    assert continue_shorter({**line, "keep_checkpoint": False}) is None  # a sweep that keeps none continues none
    assert progress(line, "pending") == "would continue longer from step 8"  # what `sweep list` says
    said = continue_shorter(line)
    assert said.startswith(f"continue {line['run_id']} from longer at step 8"), said
    latest = json.loads((ckpt / "latest").read_text())
    assert latest["run_id"] == "longer" and latest["step"] == 8 and "recorded" not in latest
    assert latest["reason"] == "continues longer"  # not the other line's signal: this line was not stopped
    assert sorted(p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")) == []  # nothing left aside
    adopted, source = (
        ckpt / "step-00000008" / "loop-rank0.pt",
        tmp_path / "checkpoints/longer/step-00000008/loop-rank0.pt",
    )
    assert os.stat(adopted).st_ino == os.stat(source).st_ino  # a link, not a copy
    assert continue_shorter(line) is None  # it has its own checkpoint now
    said = "checkpoint at step 8 of 10; held-out loss 2.500, top-1 40.0% at 0.56 samples per class"
    assert progress(line, "pending") == said  # where its curve stands, as the adopted checkpoint left it
    assert progress(line, "ok") == "checkpoint kept at step 8 of 10"  # a recorded line's final point is its record's
    own = ckpt / "latest"
    for odd in (None, [1], {"samples_per_class": float("nan"), "top1": 0.4}, {"samples_per_class": "8", "top1": 0.4},
                {"samples_per_class": 10**400, "top1": 0.4}):  # fmt: skip
        own.write_text(json.dumps({**json.loads(own.read_text()), "curve_end": odd}))
        assert progress(line, "pending") == "checkpoint at step 8 of 10"  # from before curve_end, or edited


def test_a_line_stopped_in_training_says_so_without_a_traceback_and_resumes(tmp_path):
    """SIGTERM to `sweep run-all` while its line trains: the line checkpoints and the walk ends with exit 75.
    Its log has no traceback (torchrun re-raises the signal it passed on as a `SignalException` with one of
    its own, which read as a crash in every stopped line's log), and the walk run again resumes the line."""
    import json
    import re
    import signal
    import subprocess
    import sys

    from conftest import ROOT, _env, wait_for

    grid, sweep, out = tmp_path / "grid.toml", tmp_path / "sweep.jsonl", tmp_path / "runs.jsonl"
    grid.write_text(CONTINUED.replace("[4, 9]", "[30]").replace("keep_checkpoints = true", ""))
    sweep_py = [sys.executable, str(ROOT / "launch" / "sweep.py")]
    cmd = [*sweep_py, "expand", str(grid), "-o", str(sweep), "--results", str(out)]
    assert subprocess.run(cmd, env=_env(), check=False).returncode == 0
    (line,) = [json.loads(x) for x in sweep.read_text().splitlines()]
    held = _env() | {"DISTBENCH_HOLD": f"training:{tmp_path}"}  # the rank waits on entering training
    proc = subprocess.Popen(
        [*sweep_py, "run-all", str(sweep)], env=held, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for((tmp_path / "training.rank0").exists, what="the line's rank in training", proc=proc)
        proc.send_signal(signal.SIGTERM)
        wait_for((tmp_path / "training.rank0.SIGTERM").exists, what="the signal passed on to the rank", proc=proc)
    finally:  # the rank goes on whatever happened (held, it would wait 600 s), and the sweep ends, passing it on
        (tmp_path / "training.go").touch()
        try:
            log, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # passed on to the line's torchrun, in its own session
            log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, log[-3000:]
    said = re.search(r"stopped by SIGTERM during training, after step (\d+) of 31", log)
    assert said, log[-3000:]
    assert f"stopped {line['run_id']}: checkpoint in" in log and "Traceback" not in log, log[-3000:]
    assert not out.exists()

    again = subprocess.run(
        [*sweep_py, "run-all", str(sweep)], env=_env(), capture_output=True, text=True, timeout=240, check=False
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    (record,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert record["status"] == "ok" and record["perf"]["resumed_from_steps"] == [int(said[1])]


def test_only_torchrun_s_own_signal_traceback_is_left_out_of_a_line_s_log():
    """What a sweep relays of a line's stderr: torchrun's traceback of the signal it passed on is left out; a
    traceback of anything else, one cut short, and every link of a chain (a second signal during torchrun's
    shutdown; another error after it) pass whole, in order."""
    from distbench.sweep import _without_launcher_traceback as relayed

    def tb(error: str) -> list[str]:
        return ["Traceback (most recent call last):\n", '  File "torchrun", line 6\n', "    main()\n", error]

    signalled = "torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 15\n"
    during = ["\n", "During handling of the above exception, another exception occurred:\n", "\n"]
    cause = ["\n", "The above exception was the direct cause of the following exception:\n", "\n"]
    before, after = ["W torchrun: Received 15 death signal, shutting down workers\n"], ["stopped r: checkpoint\n"]
    assert list(relayed([*before, *tb(signalled), *after])) == [*before, *after]
    for kept in (
        tb("ValueError: not torchrun's signal\n"),
        tb(signalled)[:3],  # cut short by the end of the stream
        [*tb(signalled), *during, *tb(signalled)],  # a second signal cut the shutdown short
        [*tb(signalled), *cause, *tb("RuntimeError: rendezvous shutdown failed\n")],
        [*tb("KeyError: 'x'\n"), *during, *tb(signalled)],
    ):
        assert list(relayed([*before, *kept, *after])) == [*before, *kept, *after]
