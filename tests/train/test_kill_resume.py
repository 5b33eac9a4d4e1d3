"""Training never loses work: a run killed with SIGKILL at random moments always leaves a
loadable checkpoint, and resuming after each kill ends exactly where an uninterrupted
run ends (the checkpoints are written atomically and hold every piece of state)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import torch

from energydsl.train.loop import load_checkpoint

from support import ROOT, SPECS

ARGS = ["train", str(SPECS / "gbrbm.edsl"), "--objective", "pcd", "--size", "K=4",
        "--epochs", "30", "--batch-size", "16", "--lr", "0.01"]


def _run(out, *extra, kill_delay=None):
    """Run training; with kill_delay, SIGKILL it that many seconds after it has saved at
    least one new checkpoint (progress, not wall time, so a slow machine still gets
    interrupted mid-training rather than during start-up)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    checkpoint = out / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
    process = subprocess.Popen([sys.executable, "-m", "energydsl", *ARGS, "--out", str(out),
                                *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    if kill_delay is None:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        return
    deadline = time.monotonic() + 300
    while not (checkpoint.exists() and checkpoint.stat().st_mtime_ns != before):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    time.sleep(kill_delay)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    _run(tmp_path / "reference")
    reference = load_checkpoint(tmp_path / "reference" / "checkpoint.pt")

    run = tmp_path / "killed"
    chooser = random.Random(0)
    epochs_seen = []
    for _ in range(4):
        _run(run, "--resume", kill_delay=chooser.uniform(0.0, 0.2))
        if (run / "checkpoint.pt").exists():  # never half-written: it always loads
            epochs_seen.append(load_checkpoint(run / "checkpoint.pt")["epoch"])
        leftovers = [p.name for p in run.glob(".*.tmp")] if run.exists() else []
        assert len(leftovers) <= 1  # at most the file being written when killed
    assert epochs_seen == sorted(epochs_seen)  # each resume continued, never went back
    assert epochs_seen and epochs_seen[-1] < 29  # the kills did interrupt training
    _run(run, "--resume")
    final = load_checkpoint(run / "checkpoint.pt")
    assert final["epoch"] == reference["epoch"] == 29
    for name, value in reference["model"].items():
        assert torch.equal(final["model"][name], value), name
    assert final["history"]["steps"] == reference["history"]["steps"]
