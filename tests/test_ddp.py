"""Several processes with Lightning's own DDP (gloo on CPU): C10 (minLoRA #2) and adapter-sized checkpoints."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def run_ok(cmd, env, cwd=None):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def fit_command(tmp_path, tiny_model_dir, toy_glue_dir, name, *extra):
    """A 3-epoch toy run (180 train rows / batch 4 = 45 steps per epoch, 135 in all) whose monitored val_acc is
    made to go 0.7, 0.9, 0.3 (rank_probe.ScoreByEpoch; field cases C21, C28): the best epoch is not the last one,
    on any machine. Run from tests/ on PYTHONPATH."""
    return [
        sys.executable, "-m", "lora_lightning", "fit", "--config", "sst2.yaml",
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", name,
        "--trainer.callbacks+=rank_probe.ScoreByEpoch", "--trainer.callbacks.scores=[0.7,0.9,0.3]",
        "--model.model_name_or_path", tiny_model_dir, "--model.learning_rate", "0.3",
        "--data.data_dir", toy_glue_dir, "--data.batch_size", "4", "--data.val_split", "random", *extra,
    ]


def probe_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def val_accs(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        values.update({e.step: e.value for e in events.Scalars("val_acc")} if "val_acc" in events.Tags()["scalars"] else {})
    return [values[k] for k in sorted(values)]


def best_of(ckpt: dict) -> dict:
    return [v for k, v in ckpt["callbacks"].items() if "ModelCheckpoint" in k][0]


def assert_same_run(full_dir: Path, resumed_dir: Path) -> None:
    """Same weights, step, best checkpoint (by name in its run folder) and best val_acc, exactly (CPU)."""
    full = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert full["global_step"] == resumed["global_step"] == 135 and full["epoch"] == resumed["epoch"]
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    assert all(torch.equal(full["state_dict"][k], resumed["state_dict"][k]) for k in full["state_dict"])
    assert Path(best_of(full)["best_model_path"]).name == Path(best_of(resumed)["best_model_path"]).name
    assert best_of(full)["best_model_score"] == best_of(resumed)["best_model_score"]
    assert sorted(p.name for p in (full_dir / "checkpoints").iterdir()) == sorted(p.name for p in (resumed_dir / "checkpoints").iterdir())
    assert val_accs(full_dir) == val_accs(resumed_dir)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, toy_glue_dir):
    """The uninterrupted 3-epoch run; C21: last.ckpt is its end (step 135), not the best epoch."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    proc = run_ok(fit_command(tmp, tiny_model_dir, toy_glue_dir, "full"), probe_env(), cwd=tmp)
    run = tmp / "full" / "version_0"
    # output to a pipe: plain progress lines (step, loss, time left) and each validation, no progress bar
    assert "step 100/135 (74.1%) epoch 2 train_loss" in proc.stderr and " left" in proc.stderr
    assert "epoch 0 step 45: val_acc " in proc.stderr and "epoch 2 step 135: val_acc " in proc.stderr
    assert "\r" not in proc.stdout + proc.stderr
    assert len(val_accs(run)) == 3
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 135 and last["epoch"] == 2  # the end, though the best epoch came before
    assert Path(best_of(last)["best_model_path"]).name.startswith("epoch=1-step=90-")
    assert float(best_of(last)["best_model_score"]) == pytest.approx(0.9)
    return run


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, toy_glue_dir, uninterrupted):
    """Kill -9 `fit` once the first epoch's checkpoint exists; `fit --ckpt_path last.ckpt` continues the same
    run in the same folder and ends as the uninterrupted run does."""
    import signal
    import time

    env = probe_env()
    killed = subprocess.Popen(fit_command(tmp_path, tiny_model_dir, toy_glue_dir, "killed"), env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    torch.load(last, map_location="cpu", weights_only=True)  # what the kill left is loadable
    run_ok(fit_command(tmp_path, tiny_model_dir, toy_glue_dir, "killed", "--ckpt_path", str(last)), env, cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["version_0"]  # the same run folder
    assert_same_run(uninterrupted, tmp_path / "killed" / "version_0")


@pytest.mark.parametrize("step", [5, 45, 70])
def test_ctrl_c_then_resume_equals_uninterrupted(step, tmp_path, tiny_model_dir, toy_glue_dir, uninterrupted):
    """A real SIGINT at step 5 (before any checkpoint), 45 (the last batch of epoch 1, before its validation) or 70
    (mid-epoch 2 of 3): fit exits, leaving last.ckpt at that step; resuming from it continues with the batches,
    dropout and learning rates an uninterrupted run would have, to the same end, and last.ckpt is the newest
    state (no last-v1.ckpt beside it)."""
    env = probe_env()
    import signal

    # a job started in the background (nohup ... &) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child the default handler, as a terminal's foreground job has
    proc = subprocess.run(fit_command(tmp_path, tiny_model_dir, toy_glue_dir, "ctrl-c", "--trainer.callbacks+=rank_probe.InterruptAt",
                                      f"--trainer.callbacks.step={step}"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = tmp_path / "ctrl-c" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"KeyboardInterrupt: saved the state at step {step}" in proc.stderr + proc.stdout
    assert torch.load(last, weights_only=True)["global_step"] == step
    resumed = run_ok(fit_command(tmp_path, tiny_model_dir, toy_glue_dir, "ctrl-c", "--ckpt_path", str(last)), env, cwd=tmp_path)
    assert "not resumable" not in resumed.stderr and "exists and is not empty" not in resumed.stderr
    assert sorted(p.name for p in (tmp_path / "ctrl-c" / "version_0").glob("config*.yaml")) == ["config.resume-1.yaml", "config.yaml"]
    assert_same_run(uninterrupted, tmp_path / "ctrl-c" / "version_0")


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluation_stages_with_two_processes_match_one(stage, tmp_path, tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """C20: validate, test and predict with two CPU processes (ddp) give the one-process numbers and file:
    every sentence once (15 val/test rows: ranks of 8 and 7, nothing repeated), predictions in input order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results = {}
    for devices in ("1", "2"):
        out = tmp_path / devices
        out.mkdir()
        cmd = [sys.executable, "-m", "lora_lightning", stage, "--config", "sst2.yaml",
               "--trainer.accelerator", "cpu", "--trainer.devices", devices, "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", str(out / "logs"),
               "--trainer.callbacks+=rank_probe.SaveMetrics", f"--trainer.callbacks.out_dir={out}",
               "--model.model_name_or_path", tiny_model_dir, "--data.data_dir", toy_glue_dir,
               "--data.max_eval_samples", "15", "--data.eval_batch_size", "4", "--ckpt_path", tiny_ckpt]
        if devices == "2":
            cmd += ["--trainer.strategy", "ddp"]
        run_ok(cmd, env, cwd=out)
        if stage == "predict":
            files = list((out / "logs").rglob("predictions.tsv"))
            assert len(files) == 1
            results[devices] = files[0].read_text()
        else:
            import json

            results[devices] = [json.loads((out / f"{stage}-rank{r}.json").read_text()) for r in range(int(devices))]
    if stage == "predict":
        lines = results["1"].splitlines()
        assert len(lines) == 11 and lines[0] == "index\tprediction" and [l.split("\t")[0] for l in lines[1:]] == [str(i) for i in range(10)]
        assert results["2"] == results["1"]
    else:
        one = results["1"][0]
        for rank in results["2"]:
            assert rank.keys() == one.keys()
            for key in one:
                assert abs(rank[key] - one[key]) < 1e-6, (key, rank[key], one[key])


@pytest.mark.parametrize("stage", ["validate", "predict"])
def test_fewer_rows_than_processes_give_the_one_process_answer(stage, tmp_path, tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """C37: one row and two processes: the process without a row scores a weight-0 copy that no metric and no
    prediction line counts, so val_acc / val_loss and the predictions file are the one-process ones (Lightning
    stopped on the empty loader of one rank while the other waited for it)."""
    import json

    (tmp_path / "one.txt").write_text("the film is great\n")
    results = {}
    for devices in ("1", "2"):
        out = tmp_path / devices
        out.mkdir()
        cmd = [sys.executable, "-m", "lora_lightning", stage, "--config", "sst2.yaml",
               "--trainer.accelerator", "cpu", "--trainer.devices", devices, "--trainer.strategy", "ddp",
               "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(out / "logs"),
               "--trainer.callbacks+=rank_probe.SaveMetrics", f"--trainer.callbacks.out_dir={out}",
               "--model.model_name_or_path", tiny_model_dir, "--data.data_dir", toy_glue_dir,
               "--data.max_eval_samples", "1", "--data.predict_file", str(tmp_path / "one.txt"), "--ckpt_path", tiny_ckpt]
        run_ok(cmd, probe_env(), cwd=out)
        if stage == "predict":
            (found,) = (out / "logs").rglob("predictions.tsv")
            results[devices] = found.read_text()
        else:
            results[devices] = [json.loads((out / f"validate-rank{r}.json").read_text()) for r in range(int(devices))]
    if stage == "predict":
        assert results["1"].splitlines()[1].startswith("the film is great\t") and len(results["1"].splitlines()) == 2
        assert results["2"] == results["1"]
    else:
        one = results["1"][0]
        assert {"val_acc", "val_loss"} <= one.keys()
        for rank in results["2"]:
            assert rank.keys() == one.keys() and all(abs(rank[k] - one[k]) < 1e-6 for k in one), (rank, one)
