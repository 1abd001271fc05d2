import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("train_script.py")


@pytest.mark.integration  # two training subprocesses
def test_ddp_two_cpu_processes_keep_identical_weights_and_learn(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = tmp_path / "ddp.pt"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", SCRIPT, "--ckpt", tmp_path / "ckpt", "--out", out, "--steps", "60"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    r0 = torch.load(f"{out}.rank0", weights_only=True)
    r1 = torch.load(f"{out}.rank1", weights_only=True)
    assert r0["steps"] == r1["steps"] == 60
    for key in r0["best"]:
        assert torch.equal(r0["best"][key], r1["best"][key]), key
    # The last weights (rank 0's checkpoint) are the synchronised final weights too.
    assert r0["last"].keys() == r0["best"].keys()
    history = r0["history"]
    # Rank 0's validation NLL is broadcast, so both ranks take the same decisions.
    assert [h["val_nll"] for h in history] == [h["val_nll"] for h in r1["history"]]
    assert history[-1]["train_nll"] < history[0]["train_nll"] - 0.05
    assert history[-1]["val_nll"] < history[0]["val_nll"]
    ckpt = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
