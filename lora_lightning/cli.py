"""The command line: ``python -m lora_lightning fit|validate|test|predict|export|serve --config sst2.yaml``.

Wiring only: LightningCLI with the model, the data module and this package's rules for options:

- ``--config NAME`` that is not a file here is looked up among the configs that ship with the
  package (``lora_lightning/configs/``, also ``configs/`` at the repository root);
- a mistyped option or a bad value is one line (``error: ...``, exit status 2) with a "did you mean";
- with ``--ckpt_path``, the options that define the checkpoint's tensors come from the checkpoint
  (LightningCLI rebuilds the model from its hyperparameters), and so do the optimizer options when
  ``fit`` resumes; options that only change how a model runs (``merge_for_inference``, ``compile``,
  ``torch_dtype``) are the command line's. Each difference is said in one line, naming the option,
  and so is a data option that differs from the checkpoint's run;
- ``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues in the same run folder;
- a relative logger ``save_dir`` is under ``--trainer.default_root_dir`` when that is given;
- ``--optimizer`` / ``--lr_scheduler`` are refused: the model's AdamW and schedule are its options.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from pathlib import Path

import torch
import yaml
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lora_lightning.callbacks import RemoveEmptyRunOnError, ResumeSafeSaveConfig, interactive
from lora_lightning.checkpoint import (LABEL_OPTIONS, STRUCTURE_OPTIONS, TRAINING_OPTIONS, check_checkpoint,
                                      normalise_hparam)
from lora_lightning.data import SST2DataModule, TextClassificationDataModule
from lora_lightning.errors import (CheckpointError, DataFileError, LoRALightningError, LoRALightningWarning, OneLineErrors,
                                   OptionError, command_line)
from lora_lightning.tables import FORMATS, not_found
from lora_lightning.model import LoRAClassifier

CONFIG_DIRS = (Path(__file__).resolve().parent / "configs",)
# Data options that decide which sentences a stage sees, per stage.
DATA_OPTIONS = {
    "fit": ("val_fraction", "val_split", "group_column", "seed", "max_train_samples", "max_eval_samples", "max_length",
            "batch_size"),
    "validate": ("val_fraction", "val_split", "group_column", "seed", "max_eval_samples", "max_length"),
    "test": ("max_eval_samples", "max_length"),
    "predict": ("max_length",),
}


def resolve_config(value: str) -> str:
    """``--config`` as given if it is a file, else the package's config of that name.

    Raises:
        OptionError: neither exists; names the configs that ship with the package.
    """
    if Path(value).is_file() or value.lstrip().startswith("{"):
        return value
    for folder in CONFIG_DIRS:
        for candidate in (folder / value, folder / Path(value).name):
            if candidate.is_file():
                return str(candidate)
    shipped = sorted(p.name for folder in CONFIG_DIRS for p in folder.glob("*.yaml"))
    close = difflib.get_close_matches(Path(value).name, shipped, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise OptionError(f"--config {value}: file not found (configs that ship with the package: {', '.join(shipped)}){hint}")


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with every ``--config X`` / ``--config=X`` resolved by ``resolve_config``."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    refused = [a.split("=")[0] for a in out if a.split("=")[0] in ("--optimizer", "--lr_scheduler")]
    if refused:
        raise OptionError(f"{refused[0]}: not an option here. The model trains with AdamW (--model.learning_rate, "
                          "--model.weight_decay) and a linear warm-up then decay (--model.warmup_ratio)")
    return out


def data_args(config) -> dict:
    """The data module's options in a parsed config (``data.init_args``: the data class is a choice)."""
    data = config["data"]
    return data["init_args"] if data.get("class_path") else data


class OneLineParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser, whose errors are one ``OptionError`` line with a "did you mean",
    instead of the usage text and an exit."""

    help_hint = "python -m lora_lightning fit --help"

    def error(self, message: str, ex: Exception | None = None):
        """A data option the chosen data module does not take is one line (not jsonargparse's union
        error): a typo gets its "did you mean", and an own-data option on top of ``sst2.yaml``'s SST-2
        module (``--data.train_file``) says which config takes it."""
        match = re.search(r"Parser key \"data\".*?Option '(\w+)' is not accepted", " ".join(str(message).split()))
        if not match:
            super().error(message, ex)
        option = match.group(1)
        own, sst2 = (set(inspect.signature(c).parameters) for c in (TextClassificationDataModule, SST2DataModule))
        if option in own - sst2:
            raise OptionError(f"--data.{option}: not an option of this config's data module (sst2.yaml's is "
                              f"SST2DataModule, GLUE's SST-2 files); for your own files use --config own-data.yaml "
                              f"(data.class_path: lora_lightning.data.TextClassificationDataModule)") from ex
        close = difflib.get_close_matches(option, sorted(own | sst2), n=1)
        hint = f"; did you mean --data.{close[0]}?" if close else ""
        raise OptionError(f"--data.{option}: not an option of the data module{hint} (every option: {self.help_hint})") from ex


class LoRACLI(LightningCLI):
    """``LightningCLI`` with any ``TextClassificationDataModule`` as ``data`` (``SST2DataModule`` unless
    ``data.class_path`` says otherwise), the data module's tokenizer linked to the model's
    ``model_name_or_path``, the data's classes (``num_labels``, ``id2label``) linked to the model's,
    and the rules in this module's docstring."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"data": {"class_path": f"{SST2DataModule.__module__}.{SST2DataModule.__name__}"}})
        parser.link_arguments("model.model_name_or_path", "data.init_args.model_name_or_path")
        for name in LABEL_OPTIONS:  # read from the train file once the data module exists
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def _add_subcommands(self, parser, **kwargs) -> None:
        """Lightning's subcommands, and ``export`` and ``serve`` (run by ``main``, listed here for ``--help``)."""
        super()._add_subcommands(parser, **kwargs)
        from jsonargparse import ArgumentParser

        from lora_lightning.export import export

        export_parser = ArgumentParser(description="Export a checkpoint: merged transformers folder or PEFT adapter")
        export_parser.add_function_arguments(export, as_positional=False)
        parser._subcommands_action.add_subcommand(
            "export", export_parser, help="Export a checkpoint as a merged transformers folder or a PEFT adapter")
        serve_parser = ArgumentParser(description="Serve many adapters on one base over HTTP (LitServe): "
                                                  "python -m lora_lightning serve --help")
        parser._subcommands_action.add_subcommand(
            "serve", serve_parser, help="Serve many LoRA adapters on one base over HTTP (pip install '.[serve]')")

    def parse_arguments(self, parser, args) -> None:
        """Parse, resolve ``--ckpt_path last`` / ``best`` to a file (C33), then refuse a bad ``--ckpt_path`` in one
        line before Lightning reads its hyperparameters."""
        self._given = list(args) if args is not None else sys.argv[1:]
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None and str(ckpt_path) in ("best", "last"):
            ckpt_path = self.config[subcommand]["ckpt_path"] = self._resolve_shortcut(subcommand, str(ckpt_path))
        if ckpt_path is not None and str(ckpt_path) not in ("hpc", "registry"):
            check_checkpoint(ckpt_path)

    def _resolve_shortcut(self, subcommand: str, shortcut: str) -> str:
        """``--ckpt_path last`` / ``best`` as the file it means: the ``last.ckpt`` of the run, or the best checkpoint its
        ``ModelCheckpoint`` recorded there. The run: the folder of a run's ``config.yaml`` given with ``--config``, else
        the newest run (by its ``last.ckpt``) in the logger's folder (``save_dir/name``), else the checkpoint folder of
        a run without a logger. Lightning resolves these names in the new run's own empty folder: a resumed ``fit``
        started again from step 0, and an evaluation stopped on a ``ValueError``.

        Raises:
            CheckpointError: no such checkpoint found, naming where it was looked for.
        """
        config = self.config[subcommand]
        runs, looked = [], []
        for cfg in config.get("config") or []:
            folder = Path(str(getattr(cfg, "absolute", cfg) or cfg)).resolve().parent
            if (folder / "checkpoints").is_dir():
                runs, looked = [folder / "checkpoints"], [str(folder / "checkpoints")]
        if not runs:
            for folder in self._checkpoint_folders(config):
                looked.append(str(folder))
                if folder.parent.name == "*":  # save_dir/name/*/checkpoints: every version folder
                    runs += sorted(folder.parent.parent.glob(f"*/{folder.name}"))
                elif folder.is_dir():
                    runs.append(folder)
        runs = sorted({r for r in runs if (r / "last.ckpt").is_file()}, key=lambda r: (r / "last.ckpt").stat().st_mtime)
        if not runs:
            raise CheckpointError(f"--ckpt_path {shortcut}: no run's last.ckpt found (looked in {', '.join(looked) or 'nothing'}): "
                                  "pass a checkpoint's path (fit prints it)")
        last = runs[-1] / "last.ckpt"
        path = last
        if shortcut == "best":
            state = torch.load(last, map_location="cpu", weights_only=True)
            recorded = [v.get("best_model_path") for k, v in state.get("callbacks", {}).items()
                        if "ModelCheckpoint" in k and isinstance(v, dict) and v.get("best_model_path")]
            candidates = [Path(p) for p in recorded] + [last.parent / Path(p).name for p in recorded]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise CheckpointError(f"--ckpt_path best: {last} records no best checkpoint that exists (no validation "
                                      f"ran, or it was moved): pass a checkpoint's path, or --ckpt_path {last}")
            path = found[0]
        rank_zero_info(f"--ckpt_path {shortcut}: {path}")
        return str(path)

    @staticmethod
    def _checkpoint_folders(config) -> list[Path]:
        """Where the run's checkpoints go, as patterns: ``save_dir/name/*/checkpoints`` for a logger,
        ``dirpath`` of a ``ModelCheckpoint`` that sets one, ``default_root_dir/checkpoints`` without a logger."""
        trainer = config["trainer"]
        root = Path(trainer.get("default_root_dir") or ".")
        folders = []
        for callback in trainer.get("callbacks") or []:
            init = callback.get("init_args") if hasattr(callback, "get") else None
            if init is not None and "ModelCheckpoint" in str(callback.get("class_path")) and init.get("dirpath"):
                folders.append(Path(init["dirpath"]).expanduser())
        logger = trainer.get("logger")
        init = logger.get("init_args") if hasattr(logger, "get") and logger.get("class_path") else None
        if init is not None and init.get("save_dir"):
            save_dir = Path(init["save_dir"]).expanduser()
            save_dir = save_dir if save_dir.is_absolute() else root / save_dir
            folders.append(save_dir / (init.get("name") or "lightning_logs") / "*" / "checkpoints")
        elif logger in (False, None) or init is None:
            folders.append(root / "checkpoints")
        return folders

    def _parse_ckpt_path(self) -> None:
        """Take the checkpoint's structure options (and, for ``fit``, its optimizer options) into the
        config, saying in one line each where they differ from what was given; compare the data
        options with the checkpoint's run."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = ckpt.get("hyper_parameters", {})
        config = self.config[subcommand]
        names = ("model_name_or_path",) + STRUCTURE_OPTIONS + (TRAINING_OPTIONS if subcommand == "fit" else ())
        updates = {}
        for name in names:
            if name not in saved:
                continue
            given = config["model"].get(name)
            if given is not None and normalise_hparam(given) != normalise_hparam(saved[name]):
                why = " (its optimizer and schedule state go on from it)" if name in TRAINING_OPTIONS else ""
                rank_zero_warn(f"--ckpt_path: using the checkpoint's model.{name}={saved[name]!r}, "
                               f"not model.{name}={given!r} from the config / command line{why}", category=LoRALightningWarning)
            updates[name] = saved[name]
        if updates:
            self.config = self.parser.parse_object({subcommand: {"model": updates}}, self.config)
        run_data = ckpt.get("datamodule_hyper_parameters", {})
        if run_data and "val_split" in data_args(self.config[subcommand]):
            run_data = {"val_split": "random", **run_data}  # SST-2 runs from before the option split at random
        run_config = Path(ckpt_path).resolve().parent.parent / "config.yaml"
        match = f"--config {run_config}" if run_config.is_file() else "the same --data options"
        resumed = {}
        for name in DATA_OPTIONS.get(subcommand, ()):
            given = data_args(self.config[subcommand]).get(name)
            if name in run_data and normalise_hparam(given) != normalise_hparam(run_data[name]):
                if subcommand == "fit":  # a resumed run goes on with the data it was trained on
                    resumed[name] = run_data[name]
                    rank_zero_warn(f"--ckpt_path: the resumed run goes on with its own data.{name}={run_data[name]!r} "
                                   f"(not data.{name}={given!r} from the config / command line)", category=LoRALightningWarning)
                elif name == "max_length":
                    cut = "more" if given < run_data[name] else "fewer"
                    rank_zero_warn(f"--ckpt_path: data.max_length={given!r} here, but the checkpoint's run trained with "
                                   f"data.max_length={run_data[name]!r}: {cut} tokens of long rows are cut than in training, "
                                   f"the sentences are the same (pass {match} to match it)", category=LoRALightningWarning)
                else:
                    rank_zero_warn(f"--ckpt_path: data.{name}={given!r} here, but the checkpoint's run used "
                                   f"data.{name}={run_data[name]!r}, so this {subcommand} sees other sentences than "
                                   f"that run did (pass {match} to match it)", category=LoRALightningWarning)
        for name, value in resumed.items():
            data_args(self.config[subcommand])[name] = value
        data = data_args(self.config[subcommand])
        if subcommand != "fit" and "problem_type" in data and saved.get("problem_type"):
            data["problem_type"] = saved["problem_type"]  # the checkpoint's head decides what its outputs are
        if subcommand != "fit" and "labels" in data and data.get("labels") is None and saved.get("id2label"):
            # C26: the checkpoint decides the classes; test/predict read only the files they score
            names = [saved["id2label"][k] for k in sorted(saved["id2label"], key=int)]
            data["labels"] = names

    def instantiate_classes(self) -> None:
        """Lightning's, with an error of ours raised inside a class's ``__init__`` passed on as it is:
        jsonargparse wraps what a subclass-mode class (``data``) raises in its own type error."""
        from lightning_fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
        except LoRALightningError:
            raise
        except MisconfigurationException as error:  # the Trainer's own check of its options: a user's to fix
            raise OptionError(f"trainer: {' '.join(str(error).split())}") from None
        except Exception as error:
            cause = error
            while cause is not None and not isinstance(cause, LoRALightningError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None

    def instantiate_trainer(self, **kwargs):
        """Lightning's, with the Trainer's own refusal of its options (``MisconfigurationException``, or a
        ``ValueError`` such as ``barebones`` beside ``log_every_n_steps``) as one line naming ``trainer``."""
        from lightning_fabric.utilities.exceptions import MisconfigurationException

        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as error:
            raise OptionError(f"trainer: {' '.join(str(error).split())}") from None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        trainer = config["trainer"]
        check_devices(trainer)
        logger = trainer.get("logger")
        init = logger.get("init_args") if hasattr(logger, "get") and logger.get("class_path") else None
        if init is None and logger in (False, None):
            self._drop_logging_callbacks(trainer)
        if init is not None and init.get("save_dir") and trainer.get("default_root_dir"):
            if not Path(init["save_dir"]).is_absolute():
                init["save_dir"] = str(Path(trainer["default_root_dir"]) / init["save_dir"])
        if self.subcommand == "fit" and config.get("ckpt_path") and init is not None and init.get("version") is None:
            self._continue_run_folder(Path(config["ckpt_path"]), init)
        elif self.subcommand != "fit" and config.get("ckpt_path") and init is not None and init.get("version") is None:
            ckpt = Path(config["ckpt_path"]).resolve()
            elsewhere = init.get("save_dir") and Path(init["save_dir"]).expanduser().resolve() not in ckpt.parents
            if self._given_on_command_line("save_dir") and elsewhere:  # the user's folder wins; said in one line
                rank_zero_info(f"{self.subcommand} logs under {init['save_dir']} (trainer.logger.init_args.save_dir), not in "
                               f"the checkpoint's run folder {ckpt.parent.parent}")
            else:
                self._evaluate_in_run_folder(Path(config["ckpt_path"]), init)
        self._check_data_files(config)
        if trainer.get("enable_progress_bar") is None and not interactive():
            trainer["enable_progress_bar"] = False  # a file gets ProgressLog's plain lines instead

    def _given_on_command_line(self, logger_option: str) -> bool:
        """Whether ``--trainer.logger.init_args.<option>`` (or ``--trainer.logger.<option>``) was typed on the command line."""
        names = (f"--trainer.logger.init_args.{logger_option}", f"--trainer.logger.{logger_option}")
        return any(a.split("=", 1)[0] in names for a in getattr(self, "_given", []))

    @staticmethod
    def _drop_logging_callbacks(trainer) -> None:
        """``--trainer.logger false``: leave out the config's ``LearningRateMonitor``, which has nothing to log to and
        would stop the run at its start (Lightning's ``MisconfigurationException``); said in one line."""
        callbacks = trainer.get("callbacks") or []
        kept = [c for c in callbacks if not str(getattr(c, "get", lambda _: "")("class_path")).endswith("LearningRateMonitor")]
        if len(kept) < len(callbacks):
            trainer["callbacks"] = kept
            rank_zero_info("trainer.logger=false: the config's LearningRateMonitor is left out (it logs to a logger)")

    # the data files each subcommand reads (validate reads train_file when there is no validation_file)
    STAGE_FILES = {"fit": ("train_file", "validation_file", "test_file"), "validate": ("validation_file",),
                   "test": ("test_file",), "predict": ("predict_file",)}

    def _check_data_files(self, config) -> None:
        """Check the data file options before anything runs, and report every problem in one line.

        - a file the subcommand reads (``STAGE_FILES``) that does not exist: the option, the folder it was looked
          for in, and the config that gave the value (a shipped config's example, or a run's config whose data
          has moved);
        - a file option with an extension no reader takes;
        - a shipped config's example file left in place beside a train file of the user's own (``own-data.yaml``'s
          ``test_file`` / ``predict_file`` next to ``--data.train_file mine.csv``): it would be read, or saved in
          the run's config and predicted on later, with no word.

        Data file options are then absolute paths, so a run's ``config.yaml`` resolves from any folder.

        Raises:
            DataFileError: naming each problem found.
        """
        data = data_args(config)
        names = [n for n in data.keys() if n.endswith("_file") or n == "data_dir"]
        needed = list(self.STAGE_FILES.get(self.subcommand, ()))
        if self.subcommand == "validate" and data.get("validation_file") is None:
            needed.append("train_file")
        sources = {n: self._source_of(config, n, data.get(n)) for n in names if data.get(n) is not None}
        problems, missing = [], {}
        for name in names:
            value = data.get(name)
            if value is None:
                continue
            path = Path(str(value)).expanduser()
            known = FORMATS if name != "predict_file" else {**FORMATS, ".txt": "lines"}
            if name.endswith("_file") and path.suffix.lower() not in known and path.suffix:
                problems.append(f"data.{name}: {path}: unknown file type {path.suffix!r} (expected {', '.join(known)})")
            elif not path.exists() and name in needed:
                missing.setdefault(sources.get(name), []).append((name, path))
        for source, files in missing.items():  # one sentence per config the missing values came from
            names = [n for n, _ in files]
            if len(files) == 1:
                problems.append(not_found(f"data.{names[0]}", files[0][1]) + self._source_hint(source, names))
                continue
            where = "" if all(p.is_absolute() for _, p in files) else f" (looked for in {Path.cwd()})"
            listed = ", ".join(f"data.{n}: {p}" for n, p in files)
            problems.append(f"{listed}: files not found{where}{self._source_hint(source, names)}")
        if "train_file" in data and data.get("train_file") is not None and not (sources["train_file"] or (None, False))[1]:
            examples = [n for n in names if n != "train_file" and (sources.get(n) or (None, False))[1]]
            if examples:
                config_name = sources[examples[0]][0].name
                problems.append(f"{', '.join(f'data.{n}' for n in examples)} still hold{'s' if len(examples) == 1 else ''} "
                                f"{config_name}'s example file{'s' if len(examples) > 1 else ''} beside your data.train_file: "
                                f"give each your own file, or null ({' '.join(f'--data.{n} null' for n in examples)})")
        if problems:
            raise DataFileError("; ".join(problems))
        for name in names:
            value = data.get(name)
            if value is not None and Path(str(value)).expanduser().exists():
                data[name] = str(Path(str(value)).expanduser().resolve())

    @staticmethod
    def _source_of(config, name: str, value) -> tuple[Path, bool] | None:
        """The ``--config`` file that set ``data.<name>`` to ``value`` (the last that did), and whether it is one the
        package ships; ``None`` when the value came from the command line (or a default)."""
        for cfg in reversed(config.get("config") or []):
            cfg_path = Path(str(getattr(cfg, "absolute", cfg) or cfg))
            try:
                loaded = yaml.safe_load(cfg_path.read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            data = loaded.get("data") or {}
            if (data.get("init_args") or data).get(name) == value:
                return cfg_path, cfg_path.resolve().parent in [d.resolve() for d in CONFIG_DIRS]
        return None

    @staticmethod
    def _source_hint(source: tuple[Path, bool] | None, names: list[str]) -> str:
        """What to do about missing files (the options ``names``), by the config their values came from."""
        if source is None:
            return ""
        cfg_path, shipped = source
        many, one = len(names) > 1, names[0]
        if shipped:
            what = f"the value{'s are' if many else ' is'} {cfg_path.name}'s example file{'s' if many else ''}"
            fix = "give each your own file, or null" if many else f"give --data.{one} your own file, or --data.{one} null"
        else:
            what = f"the value{'s come' if many else ' comes'} from {cfg_path}"
            fix = "give each file's path now, or null" if many else f"give --data.{one} the file's path now, or --data.{one} null"
        return f"; {what}: {fix}"

    def _evaluate_in_run_folder(self, ckpt: Path, init) -> None:
        """Log ``validate`` / ``test`` / ``predict --ckpt_path <run>/checkpoints/...`` inside that run's folder,
        under ``<run>/<subcommand>/version_N``: apart from the training runs, beside the run they evaluate (its
        metrics sit at the checkpoint's step)."""
        run = ckpt.parent.parent
        if ckpt.parent.name != "checkpoints" or not ((run / "hparams.yaml").is_file() or (run / "config.yaml").is_file()):
            return
        init["save_dir"], init["name"] = str(run), self.subcommand

    @staticmethod
    def _continue_run_folder(ckpt: Path, init) -> None:
        """Log a resumed ``fit`` into the checkpoint's own run folder when the checkpoint is that run's
        newest state (a run folder's ``checkpoints/last.ckpt``, or as new as it); an older one starts a
        new version folder, so no later checkpoint is overwritten."""
        run = ckpt.parent.parent
        if ckpt.parent.name != "checkpoints" or not ((run / "hparams.yaml").is_file() or (run / "config.yaml").is_file()):
            return
        last = ckpt.parent / "last.ckpt"
        if last.is_file() and last != ckpt:
            step = lambda p: torch.load(p, map_location="cpu", weights_only=True).get("global_step", 0)  # noqa: E731
            if step(last) > step(ckpt):
                rank_zero_info(f"{ckpt.name} is older than {last}: this run logs to a new version folder")
                return
        init["save_dir"], init["name"], init["version"] = str(run.parent.parent), run.parent.name, run.name
        rank_zero_info(f"Resuming the run in {run}")

    def _guard_run_folder(self) -> None:
        """Before each subcommand: a run stopped by a user's error leaves no empty run folder behind
        (``callbacks.RemoveEmptyRunOnError``); on CUDA, the model's float32 matmul precision is set first."""
        logger = self.trainer.logger
        if logger is not None and getattr(logger, "save_dir", None) and self.trainer.log_dir:
            self.trainer.callbacks.append(RemoveEmptyRunOnError(self.trainer.log_dir, logger.save_dir))
        if self.trainer.strategy.root_device.type == "cuda":  # before the Trainer's own Tensor Core hint
            self.model.set_matmul_precision()

    before_fit = before_validate = before_test = before_predict = _guard_run_folder

    def after_fit(self) -> None:
        """Say where the run went, and the commands that come next."""
        trainer = self.trainer
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank calls it
        if not trainer.is_global_zero:
            return
        lines = [f"Run folder: {log_dir}"]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            if ckpt.best_model_path:
                score = f" ({ckpt.monitor} {float(ckpt.best_model_score):.4f})" if ckpt.best_model_score is not None else ""
                lines.append(f"Best checkpoint{score}: {ckpt.best_model_path}")
            else:
                lines.append(f"Best checkpoint: none ({ckpt.monitor} was never computed: no validation ran)")
            if ckpt.last_model_path:
                lines.append(f"Last checkpoint (step {trainer.global_step}): {ckpt.last_model_path}")
            best = ckpt.best_model_path or ckpt.last_model_path
            if best:
                configs = sorted(Path(log_dir).glob("config*.yaml"), key=lambda p: p.stat().st_mtime)
                run_config = f"--config {configs[-1]} " if configs else ""
                lines += ["Next:",
                          f"  tensorboard --logdir {Path(log_dir).parent.parent}",
                          f"  python -m lora_lightning validate {run_config}--ckpt_path {best}",
                          f"  python -m lora_lightning test {run_config}--ckpt_path {best}",
                          f"  python -m lora_lightning predict {run_config}--ckpt_path {best}",
                          f"  python -m lora_lightning export --ckpt_path {best} --output_dir exports/{Path(log_dir).parent.name}"]
        print("\n".join(lines), flush=True)


    def _say_where(self) -> None:
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank calls it
        if self.trainer.is_global_zero and log_dir is not None:
            print(f"Run folder: {log_dir}", flush=True)

    after_validate = after_test = after_predict = _say_where


def check_devices(trainer) -> None:
    """Refuse, in one line each, ``trainer.devices`` of 0 and a GPU accelerator on a machine without one, which
    Lightning reports as tracebacks.

    Raises:
        OptionError: naming the option, what was found, and what to pass.
    """
    devices = trainer.get("devices")
    if str(devices).strip() in ("0", "[]", ""):
        raise OptionError(f"trainer.devices={devices}: at least one device is needed: pass a number >= 1, a list of "
                          "device ids, or auto")
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise OptionError(f"trainer.accelerator={accelerator}: no CUDA GPU on this machine (torch {torch.__version__}, "
                          f"{built}): pass --trainer.accelerator cpu, or auto (a GPU when there is one)")


def quiet_for_files() -> None:
    """Messages fit for a log file: our warnings as one line without a source path, no download-style
    progress bars when the output is not a terminal, and no advertisement among Lightning's info lines."""
    import logging
    import warnings

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LoRALightningWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's "does not have many workers" for every loader: the rows are tokenised once in setup, so a batch
    # is padding only (~2 ms on this project's 2-core CPU, collate and sampler together), and on CUDA it overlaps the
    # GPU's asynchronous work; worker processes would add start-up and copies (0.74x on CPU: BENCHMARKS.md, "Levers").
    # data.num_workers still sets them.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    for handler in logging.getLogger("pytorch_lightning").handlers + logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(lambda record: not str(record.msg).startswith("💡 Tip"))
    if not interactive():
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def cli_main(args: list[str] | None = None, run: bool = True) -> LoRACLI:
    """Build and run the CLI. ``args`` as on the command line (``None``: ``sys.argv``).

    Raises:
        LoRALightningError: bad options, data or checkpoints (``main`` prints it as one line).
    """
    with command_line():  # errors name options as flags (model.r), not as Python arguments
        if args is not None:
            args = resolve_config_args(args)
        else:
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        return LoRACLI(
            LoRAClassifier,
            TextClassificationDataModule,
            subclass_mode_data=True,
            seed_everything_default=42,
            parser_class=OneLineParser,
            parser_kwargs={"prog": "python -m lora_lightning"},
            save_config_callback=ResumeSafeSaveConfig,
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )


def end_process_group() -> None:
    """Destroy the ``torch.distributed`` process group a multi-process run (``--trainer.strategy ddp``) left:
    Lightning keeps it after the Trainer ends, and a gloo group torn down at interpreter exit can abort the
    process ("terminate called without an active exception", exit status -6) after its work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(args: list[str] | None = None) -> int:
    """``cli_main`` (or ``export``) for the shell: a ``LoRALightningError`` prints as one line, exit status 2."""
    argv = sys.argv[1:] if args is None else args
    quiet_for_files()
    try:
        with command_line():
            if argv[:1] == ["export"]:
                from lora_lightning.export import export_main

                export_main(argv[1:])
            elif argv[:1] == ["serve"]:
                try:
                    from lora_lightning.serve import serve_main
                except ImportError as error:
                    raise OptionError(f"serve needs LitServe ({error}): pip install 'lora_lightning[serve]'") from None
                serve_main(argv[1:])
            else:
                cli_main(args)
                end_process_group()
    except LoRALightningError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
