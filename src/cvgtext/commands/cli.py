"""What the entry points share: one clear message for a user's mistake instead of a traceback."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cvgtext.utils.errors import CVGTextError

log = logging.getLogger(__name__)


class JobFailed(CompactHydraException):
    """A sweep job stopped by a user error; Hydra prints it as one line when the sweep ends."""


def writable_folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be created or written to, or None when it can (it is then created)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as error:
        return error.strerror


class CheckRunFolder(Callback):
    """Stop with one line when the run folder cannot be written, before Hydra writes into it.

    Hydra creates the folder, its ``.hydra/`` configs and the log file before the job starts; a
    read-only or forbidden folder fails there with a traceback from ``pathlib`` or ``logging``.
    Hydra turns an exception raised by a callback into a warning and goes on, so this one
    prints the message and exits itself, as :func:`reports_user_errors` does.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(self.resolved(config, "run"), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(self.resolved(config, "sweep"), "hydra.sweep.dir")

    @staticmethod
    def resolved(config: DictConfig, mode: str) -> str:
        """``hydra.<mode>.dir``: Hydra sets the config its ``${hydra:...}`` resolver reads (the
        default paths go through ``${hydra:runtime.cwd}``) only when the job starts, after this
        callback; set it now, as the job will."""
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            HydraConfig.instance().set_config(config)
        return config.hydra[mode].dir

    @staticmethod
    def check(folder: str, key: str) -> None:
        problem = writable_folder_problem(folder)
        if problem is not None:
            print(
                f"error: cannot write the run folder {folder} ({problem}); "
                f"point {key} (or paths.log_dir) at a writable folder",
                file=sys.stderr,
            )
            sys.exit(1)


class CheckLauncher(Callback):
    """Refuse a submitit sweep whose tasks do not match the trainer's devices, before any job is
    submitted: Lightning's SLURM environment makes one rank of each task, so
    ``hydra.launcher.tasks_per_node`` must equal ``trainer.devices`` and ``hydra.launcher.nodes``
    ``trainer.num_nodes`` (``cluster=slurm`` derives them so); submitit's local executor gives
    Lightning no ranks, so it runs one task per job.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.get("launcher") or {}
        target = str(launcher.get("_target_", ""))
        if "submitit" not in target:
            return
        local = "LocalLauncher" in target
        devices = config.trainer.get("devices")
        if local:  # its jobs run on this machine: count the devices as Lightning will there
            devices = lightning_devices(config.trainer.get("accelerator"), devices)
        problem = launcher_problem(
            local=local,
            tasks=launcher.get("tasks_per_node"),
            nodes=launcher.get("nodes"),
            devices=devices,
            num_nodes=config.trainer.get("num_nodes"),
        )
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(1)


class CheckDataPresent(Callback):
    """Stop with one line when a run's city is not on disk at all, naming the missing file and the
    download command, before Hydra creates the run folder and before any logger starts.

    A sweep's jobs are composed here as the basic sweeper will compose them, so that a sweep
    over cities without data stops before its sweep folder exists. ``enabled: false`` (what
    download.py sets) turns it off.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.enabled:
            CheckRunFolder.resolved(config, "run")
            self.stop_if_missing(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from hydra.core.hydra_config import HydraConfig

        CheckRunFolder.resolved(config, "sweep")
        outer = HydraConfig.instance().cfg
        messages = []
        try:
            for job in sweep_job_configs(config):
                HydraConfig.instance().set_config(job)
                messages.append(self.missing(job))
        finally:
            HydraConfig.instance().cfg = outer
        messages = [message for message in messages if message is not None]
        if messages:
            more = f" (and {len(messages) - 1} more of the sweep's data choices are not there either)"
            self.stop(messages[0] + (more if len(messages) > 1 else ""))

    def stop_if_missing(self, config: DictConfig) -> None:
        message = self.missing(config)
        if message is not None:
            self.stop(message)

    @staticmethod
    def stop(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)

    @staticmethod
    def missing(config: DictConfig) -> str | None:
        """The message for a job whose city is not on disk, or None."""
        from cvgtext.data.release.presence import missing_release

        data = config.get("data")
        if data is None or data.get("synthetic") is not None or data.get("format", "folders") != "folders":
            return None
        choices = config.hydra.runtime.choices
        return missing_release(
            Path(data.data_dir),
            str(data.city),
            list(data.versions),
            str(data.annotation_file),
            str(data.image_folder),
            img=choices.get("img") or config.img.name,
            text=choices.get("text"),
            overrides=list(config.hydra.overrides.task),
        )


# The override roots that can change where a job's data is: only the distinct combinations of
# these are composed (a sweep over seeds or learning rates checks its data once).
DATA_ROOTS = ("city", "img", "text", "data", "paths", "experiment")


def sweep_job_configs(config: DictConfig) -> list[DictConfig]:
    """The configs of a sweep's jobs that differ in where their data is, as Hydra's basic sweeper
    makes them; other sweepers choose their jobs as they go, so for them the sweep's own config."""
    if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
        return [config]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    (jobs,) = BasicSweeper.split_arguments(overrides, None)

    def key(override: str) -> str:
        return override.split("=", 1)[0]

    def about_data(override: str) -> bool:
        return re.split(r"[./@]", key(override).lstrip("+~"), maxsplit=1)[0] in DATA_ROOTS

    first = {key(override): override for override in jobs[0]}
    distinct = dict.fromkeys(tuple(o if about_data(o) else first.get(key(o), o) for o in job) for job in jobs)
    return [loader.load_sweep_config(config, list(job)) for job in distinct]


def lightning_devices(accelerator: Any, devices: Any) -> Any:
    """How many devices Lightning's ``Trainer(accelerator=..., devices=...)`` uses on this machine
    (``auto``: every device of the accelerator it picks, one CPU process on a machine without
    GPUs); ``devices`` as given where Lightning would refuse the pair itself."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    accelerator = str(accelerator or "auto")
    try:
        if accelerator == "auto":
            accelerator = _AcceleratorConnector._choose_auto_accelerator()
        elif accelerator == "gpu":
            accelerator = _AcceleratorConnector._choose_gpu_accelerator_backend()
        kind = type(AcceleratorRegistry.get(accelerator))
        wanted = kind.auto_device_count() if devices == "auto" else devices
        return len(kind.get_parallel_devices(kind.parse_devices(wanted)))
    except Exception:  # Lightning's own message comes when the job builds its Trainer
        return devices


def launcher_problem(local: bool, tasks: Any, nodes: Any, devices: Any, num_nodes: Any) -> str | None:
    """What is wrong with a submitit launcher's tasks for the trainer's devices, or None."""
    if local and (tasks != 1 or devices != 1):
        return (
            f"hydra/launcher=submitit_local runs one process per job, which Lightning cannot split into "
            f"ranks: set trainer.devices=1 and hydra.launcher.tasks_per_node=1 (got {devices} and {tasks}); "
            "several devices per job need hydra/launcher=submitit_slurm"
        )
    if not isinstance(devices, int) or tasks != devices:
        return (
            f"hydra.launcher.tasks_per_node={tasks} must equal trainer.devices={devices}: SLURM starts one "
            "task per device and Lightning makes a rank of each; set both to the GPUs per node (cluster=slurm "
            "derives tasks_per_node from trainer.devices)"
        )
    if nodes != num_nodes:
        return f"hydra.launcher.nodes={nodes} must equal trainer.num_nodes={num_nodes}"
    return None


def user_message(error: BaseException) -> str:
    """The message of an error, without the traceback a DataLoader worker wraps around it."""
    message = str(error)
    if "Original Traceback" in message:
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[-1] if last.startswith(type(error).__module__) else last
    return message


def find_user_error(error: BaseException) -> CVGTextError | None:
    """The :class:`CVGTextError` behind ``error``, also when ``hydra.utils.instantiate`` wrapped it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, CVGTextError):
            return seen
        seen = seen.__cause__
    return None


def in_multirun() -> bool:
    """Whether this job is one of a ``-m`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def reports_user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Report a :class:`CVGTextError` as one line instead of a traceback.

    A single run prints it and exits with status 1. A job of a sweep (``-m``) logs it to its own
    log and fails only itself: the sweep goes on with the next jobs, Hydra's basic sweeper then
    ends the sweep with status 1 and the failed job's overrides, and the Optuna sweeper records
    the trial as failed. ``HYDRA_FULL_ERROR=1`` keeps the full traceback, as it does for Hydra's
    own errors.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Exception as raised:
            error = find_user_error(raised)
            if error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            message = f"error: {user_message(error)}"
            if in_multirun():
                # SystemExit would end the whole sweep: fail this job with an exception Hydra
                # stores in the job's result and prints without a traceback.
                log.error(message)
                raise JobFailed(message) from None
            print(message, file=sys.stderr)
            sys.exit(1)

    return wrapper
