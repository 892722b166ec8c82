"""Several processes with Lightning's own DDP (gloo on CPU): C10 (minLoRA #2) and adapter-sized checkpoints."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_cpu_processes(tmp_path, tiny_model_dir, toy_glue_dir):
    """Default find_unused_parameters=False works (frozen weights get no grad, every trainable one does);
    both ranks end with identical LoRA tensors; each checkpoint is written once and stays adapter-sized;
    the synchronised val_acc reaches what one process reaches on the toy set
    (test_model::test_tiny_model_learns_toy_set: >= 0.9)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "lora_lightning", "fit", "--config", str(ROOT / "configs/sst2.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "25", "--trainer.check_val_every_n_epoch", "25", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.callbacks+=rank_probe.SaveRankWeights", f"--trainer.callbacks.out_dir={tmp_path}",
        "--model.model_name_or_path", tiny_model_dir, "--model.r", "8", "--model.lora_alpha", "16",
        "--model.lora_dropout", "0", "--model.learning_rate", "1e-2", "--model.warmup_ratio", "0",
        "--data.data_dir", toy_glue_dir, "--data.batch_size", "8", "--data.val_fraction", "0.2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "find_unused_parameters" not in proc.stderr
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) == 2 * 2 * 2 + 2
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    ckpts = sorted(p.name for p in (tmp_path / "logs").rglob("*.ckpt"))
    assert ckpts.count("last.ckpt") == 1 and len(ckpts) == 2, ckpts
    state = torch.load(next((tmp_path / "logs").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert set(state["state_dict"]) == set(rank0)  # adapter-sized under DDP too
    best = [v for k, v in state["callbacks"].items() if "ModelCheckpoint" in k][0]["best_model_score"]
    assert float(best) >= 0.9


def run_ok(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def fit_command(tmp_path, tiny_model_dir, toy_glue_dir, name, *extra, version="0"):
    return [
        sys.executable, "-m", "lora_lightning", "fit", "--config", str(ROOT / "configs/sst2.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "6", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", name,
        "--trainer.logger.init_args.version", version,
        "--model.model_name_or_path", tiny_model_dir, "--model.learning_rate", "1e-2",
        "--data.data_dir", toy_glue_dir, "--data.batch_size", "4", *extra,
    ]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, toy_glue_dir):
    """Kill -9 `fit` once the first epoch's checkpoint exists; `fit --ckpt_path last.ckpt` finishes with the
    same adapter weights and the same val_acc checkpoints as an uninterrupted run (CPU, exactly)."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_ok(fit_command(tmp_path, tiny_model_dir, toy_glue_dir, "full"), env)
    killed = subprocess.Popen(fit_command(tmp_path, tiny_model_dir, toy_glue_dir, "killed"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    torch.load(last, map_location="cpu", weights_only=True)  # what the kill left is loadable
    # the resumed run logs to a new version folder, as a user's would: nothing of the killed run is overwritten
    run_ok(fit_command(tmp_path, tiny_model_dir, toy_glue_dir, "killed", "--ckpt_path", str(last), version="1"), env)
    full = torch.load(tmp_path / "full" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert full["global_step"] == resumed["global_step"] > 0
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    assert all(torch.equal(full["state_dict"][k], resumed["state_dict"][k]) for k in full["state_dict"])
    assert full["epoch"] == resumed["epoch"]
    score = lambda c: [v["best_model_score"] for k, v in c["callbacks"].items() if "ModelCheckpoint" in k][0]  # noqa: E731
    assert score(full) == score(resumed)  # the same best val_acc
