"""Lightning callbacks with the behaviour this package promises: ``last.ckpt`` is the newest state,
an interrupted ``fit`` leaves a checkpoint to resume from, a resumed run never overwrites a config,
and progress shows as plain lines when the output is not a terminal.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lora_lightning.errors import LoRALightningError, LoRALightningWarning


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is always the newest state (field case C21).

    Since Lightning 2.6, ``save_last=True`` writes ``last.ckpt`` only when a top-k checkpoint is
    written at the same step, so after an epoch whose ``val_acc`` did not improve (or one without
    validation) ``last.ckpt`` silently held an older epoch. Here ``last.ckpt`` is also written:

    - after every validation and at every training epoch end where nothing was saved at that step;
    - at the end of training, if the last step is not saved yet;
    - when ``fit`` is interrupted (Ctrl-C, or any exception but a diverged loss): the state of the
      last completed step, to resume from with ``fit --ckpt_path .../last.ckpt``.

    A validation whose loss or logits are not finite (``val_loss`` NaN, or the model's ``eval_finite`` false) is
    never a top-k ("best") checkpoint, whatever its score; said in one line (``check_monitor_top_k``).

    Arguments are Lightning's; the state key is Lightning's (``ModelCheckpoint{...}``), so
    checkpoints written with either class resume with either. Built on Lightning's public API only:
    ``trainer.save_checkpoint`` writes ``last.ckpt`` (atomically, as Lightning's own saves), the public
    ``on_save_checkpoint`` hook tells at which step anything was last saved, and Lightning's "directory
    exists and is not empty" warning is held back until ``on_fit_start`` and dropped for a run resumed into
    its own folder.

    Evaluation runs (``validate``/``test``/``predict --ckpt_path``) do not reload this callback's
    state: it only describes the training run's folder (Lightning would warn "The dirpath has
    changed" on every evaluation).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stage, self._saved_step = stage, None
        self._follow_the_task(pl_module)
        # Lightning warns here when the folder holds checkpoints; a run resumed into its own folder finds its own
        # there (known only once load_state_dict runs): hold the warning back until on_fit_start
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().setup(trainer, pl_module, stage)
        self._held = [w for w in caught if "exists and is not empty" in str(w.message)]
        for w in caught:
            if w not in self._held:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _follow_the_task(self, pl_module: pl.LightningModule) -> None:
        """A monitored ``val_*`` metric the model's problem type does not log (a config's ``val_acc`` for a regression
        run) becomes the type's own (``val_macro_f1``, ``val_pearson``; higher is better), in the file name too, said
        in one line: a shared config serves every problem type."""
        task, metrics = getattr(pl_module, "task", None), getattr(pl_module, "val_metrics", None)
        if task is None or metrics is None or not (self.monitor or "").startswith("val_"):
            return
        logged = {"val_loss", f"hp/val_{task.monitor}"} | set(metrics.keys())
        if self.monitor in logged:
            return
        was, self.monitor, self.mode = self.monitor, f"val_{task.monitor}", "max"
        self.kth_value = torch.tensor(-torch.inf)  # what Lightning starts a "max" monitor from
        if self.filename:
            self.filename = self.filename.replace(was, self.monitor)
        rank_zero_info(f"ModelCheckpoint: a {task.problem_type} model logs no {was}: the best checkpoint is chosen by "
                       f"{self.monitor} (higher is better)")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for w in getattr(self, "_held", []):
            rank_zero_warn(str(w.message))
        self._held = []

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._saved_step = trainer.global_step  # a checkpoint (any: top-k, last, the user's) is written at this step
        if getattr(self, "_interrupted", False):
            validation_pending(trainer, checkpoint)

    def load_state_dict(self, state_dict: dict) -> None:
        if getattr(self, "_stage", "fit") != "fit":
            return
        self._held = []  # resuming: the folder's checkpoints are this run's
        saved_dir = state_dict.get("dirpath", self.dirpath)
        if saved_dir and self.dirpath and os.path.realpath(saved_dir) == os.path.realpath(self.dirpath):
            # the same folder, perhaps spelled otherwise (relative / absolute): paths in this run's spelling
            moved = lambda path: os.path.join(self.dirpath, os.path.relpath(path, saved_dir)) if path else path  # noqa: E731
            state = {**state_dict, "dirpath": self.dirpath}
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                state[key] = moved(state_dict.get(key, ""))
            state["best_k_models"] = {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}
            super().load_state_dict(state)
            last = os.path.join(self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
            if self.save_last and os.path.isfile(last):  # the run's last.ckpt is the one to overwrite, however it stopped
                self.last_model_path = last
            return
        # resumed into another folder: top-k starts afresh there; the best so far stays a path in the old one
        rank_zero_info(f"Resuming in {self.dirpath}; the checkpoint's run kept its checkpoints in "
                       f"{saved_dir} (best so far: {state_dict.get('best_model_path')})")
        self.best_model_path = state_dict["best_model_path"]

    def write_last(self, trainer: pl.Trainer) -> None:
        """Write ``<dirpath>/last.ckpt`` now (``trainer.save_checkpoint``: atomic, every rank takes part)."""
        path = os.path.join(self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        # set first, as Lightning does: the state saved names this file, so a run resumed from it overwrites it
        # (Lightning would otherwise count versions and write last-v1.ckpt beside it, leaving last.ckpt older)
        self.last_model_path = path
        trainer.save_checkpoint(path, self.save_weights_only)

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        if (self.save_last and self.dirpath and trainer.state.fn == "fit" and not trainer.sanity_checking
                and not trainer.fast_dev_run and self._saved_step != trainer.global_step):
            self.write_last(trainer)

    def _validation_sound(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Whether the validation just run holds a sound model: its loss (``<prefix>loss`` of the monitored metric,
        ``val_loss``) and the model's own check of its losses and logits (``eval_finite``) are finite."""
        prefix = (self.monitor or "val_").split("_", 1)[0] + "_"
        loss = trainer.callback_metrics.get(f"{prefix}loss")
        finite = loss is None or bool(torch.isfinite(torch.as_tensor(loss)).all())
        return finite and bool(getattr(pl_module, "eval_finite", True))

    def check_monitor_top_k(self, trainer: pl.Trainer, current=None) -> bool:
        """Lightning's rule, less any validation whose loss or logits were not finite: such a model is never kept
        as a top-k (best) checkpoint, whatever its score (``last.ckpt`` still holds it, as the newest state); said
        in one line. Asked when Lightning is about to save, with the metrics it has just read."""
        if current is not None and not self._validation_sound(trainer, trainer.lightning_module):
            rank_zero_warn(f"the validation at step {trainer.global_step} had a loss or logits that are not finite "
                           f"({self.monitor} {float(current):.4f}): it is not a candidate for the best checkpoint",
                           category=LoRALightningWarning)
            return False
        return super().check_monitor_top_k(trainer, current)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # A validation at an epoch's end is followed by on_train_epoch_end, where Lightning saves top-k then (and
        # last with it): writing last.ckpt here first would record no top-k file that a kill could then orphan.
        at_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch is not None
        if not at_epoch_end:
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_behind(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_last_if_behind(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, LoRALightningError) or trainer.state.fn != "fit" or trainer.sanity_checking:
            return  # a diverged loss: the checkpoints saved before it are the ones worth keeping
        if self.save_last and self.dirpath and self._saved_step != trainer.global_step:
            # Lightning steps per-step schedulers after on_train_batch_end: an interrupt in between leaves
            # the schedule one step behind the optimizer. Catch it up, so the saved state is consistent.
            for config in trainer.lr_scheduler_configs:
                if config.interval == "step" and config.frequency == 1:
                    while getattr(config.scheduler, "last_epoch", trainer.global_step) < trainer.global_step:
                        config.scheduler.step()
            self._interrupted = True
            try:
                self.write_last(trainer)
            finally:
                self._interrupted = False
            rank_zero_info(f"{type(exception).__name__}: saved the state at step {trainer.global_step} to "
                           f"{self.last_model_path}; resume with fit --ckpt_path {self.last_model_path}")


def validation_pending(trainer: pl.Trainer, checkpoint: dict) -> None:
    """Mark, in a checkpoint written on an interrupt, a validation that the epoch's last batch was to be followed by
    and that has not run: Lightning's loop state then reads as a stop at that validation's start, so the resumed run
    runs it (and the epoch's end: its top-k checkpoint, its logged metrics) before going on, as the uninterrupted
    run did. Left as Lightning saved it, a stop right after the last batch's step (Ctrl-C at the end of an epoch)
    resumes into the next epoch and that validation is never run.

    Edits Lightning's loop progress counters (``loops.fit_loop``: the training batch's ``completed``, the validation's
    ``ready`` / ``started``), a private format checked by ``tests/test_private_api.py``.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    train, val = loop.get("epoch_loop.batch_progress"), loop.get("epoch_loop.val_loop.batch_progress")
    if not train or not val or not train.get("is_last_batch"):
        return
    every = trainer.check_val_every_n_epoch
    validates = (trainer.enable_validation and sum(trainer.num_val_batches or [0]) > 0
                 and (every is None or (trainer.current_epoch + 1) % every == 0))
    total = train["total"]
    if not validates or total["completed"] != total["processed"] - 1:  # not stopped between the step and validation
        return
    for key in ("total", "current"):
        train[key]["completed"] = train[key]["processed"]  # the batch is done
        val[key]["ready"] = val[key]["started"] = val[key]["processed"] + 1  # a validation started, none of it done
        val[key]["completed"] = val[key]["processed"]


class RemoveEmptyRunOnError(Callback):
    """Removes the run folder a ``fit``/``validate``/``test``/``predict`` created, when it stops on an error a user can
    fix (``LoRALightningError``: a bad file, option or checkpoint) before writing any checkpoint: such a folder holds
    only a config and an empty event file, and would crowd TensorBoard and shift the version numbers. A folder that
    existed before the run, or holds a checkpoint, is never touched; empty parents it leaves are removed up to
    ``keep`` (the logger's save_dir). The CLI adds it to every run (``cli.LoRACLI``).

    Args:
        folder: the run's log folder, as the logger will name it.
        keep: the folder above which nothing is removed.
    """

    def __init__(self, folder: str, keep: str) -> None:
        self.folder, self.keep = os.path.abspath(folder), os.path.abspath(keep)
        self.existed = os.path.exists(self.folder)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.existed or not isinstance(exception, LoRALightningError) or not trainer.is_global_zero:
            return
        if not os.path.isdir(self.folder) or any(name.endswith(".ckpt") for _, _, files in os.walk(self.folder) for name in files):
            return
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
        parent = os.path.dirname(self.folder)
        while parent.startswith(self.keep + os.sep) and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
            parent = os.path.dirname(parent)


class ResumeSafeSaveConfig(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` that never overwrites a run's ``config.yaml`` and never
    fails because one exists: a run resumed into its own folder writes ``config.resume-N.yaml``
    (N = 1, 2, ...: the first free name) beside it."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank calls it once
        if not self.already_saved and log_dir is not None and trainer.is_global_zero:
            stem, suffix = os.path.splitext(self.config_filename)
            n = 0
            while os.path.exists(os.path.join(log_dir, self.config_filename)):
                n += 1
                self.config_filename = f"{stem.split('.resume-')[0]}.resume-{n}{suffix}"
        self.config_filename = trainer.strategy.broadcast(self.config_filename)
        super().setup(trainer, pl_module, stage)


def interactive() -> bool:
    """Both stdout and stderr are terminals: a progress bar (stdout) and warnings (stderr) are seen as such."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressLog(Callback):
    """One plain line every ``every_n_steps`` optimizer steps when stdout or stderr is not a terminal
    (``make fit > log``, nohup, CI), where a progress bar would be one long line of carriage returns::

        step 400/5685 (7.0%) epoch 0 train_loss 0.3121 | 2m05s elapsed, 27m32s left

    Time left is the mean time per step so far times the steps left (validation included). In a
    terminal it prints nothing: the progress bar shows the same. ``always=True`` prints in both.

    Args:
        every_n_steps: optimizer steps between lines.
        always: print even when stderr is a terminal.
    """

    def __init__(self, every_n_steps: int = 100, always: bool = False) -> None:
        self.every_n_steps = every_n_steps
        self.always = always
        self._start = None

    def _active(self) -> bool:
        return self.always or not interactive()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = (time.monotonic(), trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active() or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        # the per-class F1 (val_f1_<name>, K > 2 classes) is in TensorBoard; the line keeps val_macro_f1
        per_class = {f"val_f1_{name}" for name in getattr(pl_module, "label_names", [])}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_") and k not in per_class}
        shown = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        rank_zero_info(f"epoch {trainer.current_epoch} step {trainer.global_step}: {shown}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self._active() or self._start is None or step == self._start[1] or step % self.every_n_steps:
            return
        if getattr(self, "_last_step", None) == step:  # several micro-batches per step (accumulation)
            return
        self._last_step = step
        elapsed = time.monotonic() - self._start[0]
        total = trainer.estimated_stepping_batches
        line = f"step {step}/{total} ({100 * step / total:.1f}%) epoch {trainer.current_epoch}"
        loss = trainer.callback_metrics.get("train_loss")
        if loss is not None:
            line += f" train_loss {float(loss):.4f}"
        left = elapsed / (step - self._start[1]) * (total - step)
        rank_zero_info(f"{line} | {_minutes(elapsed)} elapsed, {_minutes(left)} left")
