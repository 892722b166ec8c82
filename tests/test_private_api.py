"""The private names of other libraries this package still leans on, fenced: pyproject.toml declares the version
range they were checked on (``pytorch-lightning<2.7``, ``jsonargparse<5``), and this test fails loudly, naming the
use, when an upgrade removes one. Everything else uses public API (issue 18: ModelCheckpoint's last.ckpt,
TensorBoard's hparams, the Timer)."""

import argparse
import inspect

import pytest
import torch
from jsonargparse import ArgumentParser
from pytorch_lightning.cli import LightningCLI

USES = [
    # (object, attribute, where this package uses it, what for)
    (LightningCLI, "_parse_ckpt_path", "cli.LoRACLI._parse_ckpt_path",
     "the checkpoint's options go into the config before the classes are built (C09)"),
    (LightningCLI, "_add_subcommands", "cli.LoRACLI._add_subcommands", "`export` listed in --help"),
    (torch.optim.lr_scheduler.LambdaLR, "_last_lr", "optim.set_rates (model.LoRAClassifier.on_train_start)",
     "the learning rate of the first step once the schedule's length is known"),
]


@pytest.mark.parametrize("owner, name, where, why", USES, ids=[f"{o.__name__}.{n}" for o, n, _, _ in USES])
def test_private_names_still_exist(owner, name, where, why):
    if name == "_last_lr":
        scheduler = owner(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), lambda step: 1.0)
        present = hasattr(scheduler, name)
    else:
        present = hasattr(owner, name) and callable(getattr(owner, name))
    assert present, (f"{owner.__module__}.{owner.__name__}.{name} is gone in this release; {where} uses it ({why}): "
                     "port it, then widen the version range in pyproject.toml")


def test_parser_internals_still_exist():
    """argparse's ``_actions`` (errors.OneLineErrors lists the options for "did you mean") and jsonargparse's
    ``_subcommands_action`` (cli.LoRACLI adds ``export``)."""
    assert isinstance(argparse.ArgumentParser()._actions, list), "argparse.ArgumentParser._actions is gone: errors.py"
    parser = ArgumentParser()
    parser.add_subcommands()
    assert hasattr(parser, "_subcommands_action"), "jsonargparse's _subcommands_action is gone: cli.LoRACLI._add_subcommands"
    assert "parser" in inspect.signature(LightningCLI._add_subcommands).parameters


def test_loop_progress_format_still_holds():
    """callbacks.validation_pending edits a checkpoint's loop progress (a Ctrl-C between an epoch's last step and its
    validation resumes into that validation): the keys it edits, and the restart stage Lightning reads from them."""
    from pytorch_lightning.loops.evaluation_loop import RestartStage
    from pytorch_lightning.loops.progress import _BatchProgress

    assert hasattr(RestartStage, "RESTARTED_MID_EVALUATION"), "Lightning's RestartStage changed: callbacks.validation_pending"
    state = _BatchProgress().state_dict()
    assert {"total", "current", "is_last_batch"} <= set(state), state
    assert {"ready", "started", "processed", "completed"} <= set(state["total"]), state
