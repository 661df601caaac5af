"""Shared pieces of the sub-commands: config arguments, a progress callback for training, and the help
of ``--overwrite`` for the commands that write a whole output folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from protoseg.cli.progress import progress_bar
from protoseg.config import ProtosegConfig, load_config
from protoseg.train.events import EventKind, TrainEvent

#: ``--overwrite`` of the commands writing a whole output folder (``protoseg.outputs.check_replaceable``).
HELP_OVERWRITE_DIR = (
    "also replace an output folder holding another kind of protoseg output "
    "(a folder holding files protoseg did not write is never replaced)"
)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus repeatable ``--set section.key=value`` overrides."""
    parser.add_argument("--config", type=Path, help="YAML config (sections: data, bank, model, stage1, stage2, run)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stage1.epochs=3 (repeatable)",
    )


def data_classes(cfg: ProtosegConfig) -> tuple[str, ...] | None:
    """Class names of the training split of ``data.root`` (any layout), or None when it cannot be read yet
    (the training job reports that with its own error)."""
    from protoseg.data.datasets import open_dataset
    from protoseg.errors import ProtosegError

    if not cfg.data.root:
        return None
    try:
        return tuple(open_dataset(cfg.data.root, "train", cfg.data.layout).classes.names)
    except (ProtosegError, OSError):
        return None


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> ProtosegConfig:
    """Defaults < ``--preset`` (where the verb has it) < YAML file < shortcut flags (``extra``) < ``--set``;
    a preset is fitted to the data's classes (one log line when they differ from the preset's)."""
    overrides = [*(extra or []), *args.overrides]
    if not getattr(args, "preset", None):
        return load_config(args.config, overrides)
    from protoseg.presets import load_preset

    classes = data_classes(load_config(args.config, overrides, base=load_preset(args.preset)))
    return load_config(args.config, overrides, base=load_preset(args.preset, classes))


class ProgressBar:
    """Training callback: a tqdm bar with the latest losses on a terminal, throttled log lines when stderr is
    piped (``protoseg.cli.progress``)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def __call__(self, event: TrainEvent) -> None:
        if event.kind is EventKind.START:
            self.bar = progress_bar(self.desc, total=event.total_steps, initial=event.step, unit="step")
        elif self.bar is None:
            return
        elif event.kind is EventKind.STEP:
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in list(event.losses.items())[:4]}, refresh=False)
        elif event.kind is EventKind.VALIDATION:
            self.bar.write(
                f"{event.stage} epoch {event.epoch}: "
                + " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items() if isinstance(v, float))
            )
        elif event.kind in (EventKind.END, EventKind.CANCELLED):
            self.bar.close()
            self.bar = None
