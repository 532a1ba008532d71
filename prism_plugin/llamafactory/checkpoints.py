"""Checkpoints that are complete or ignored, for runs that are killed and resumed for days.

- **Staged saves** (:class:`AtomicCheckpointMixin`): the Trainer writes ``checkpoint-N`` into
  ``output_dir/.prism-staging/``; once every rank has written its part (a barrier) and the files are flushed
  to disk, the main process writes the completion marker and renames the folder into place — one atomic
  rename, as DeepSpeed's ``latest`` tag or PyTorch Distributed Checkpoint's metadata-last commit make a
  checkpoint visible only when whole. A kill at any moment leaves either the previous checkpoints as they
  were, or the new one whole.
- **Finished runs**: ``output_dir`` holds the checkpoints and logs, so it cannot be renamed; the final
  save ends with :data:`COMPLETE_MARKER` written last (:func:`mark_output_complete`).
- **Choosing a checkpoint** (:func:`last_complete_checkpoint`): the newest ``checkpoint-N`` that is
  complete — marked, or, for one without a marker (a kill inside an older version's save, a stock stage),
  judged by its content: ``trainer_state.json`` present (the Trainer writes it last), every JSON file parses,
  every safetensors header reads and the file is as long as its header says, every torch archive's index
  reads. A torn one is skipped with one warning naming it and why; LLaMA-Factory's own choice of the last
  checkpoint goes through it (the start-up hook patches ``get_last_checkpoint`` in its argument parser).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prism_plugin.errors import ConfigError
from prism_plugin.faults import kill_point

CHECKPOINT_MARKER = "prism_checkpoint.json"
COMPLETE_MARKER = "prism_run_complete.json"
STAGING_DIR = ".prism-staging"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TORCH_ARCHIVES = (".pt", ".pth", ".bin")


class IncompleteCheckpointError(ConfigError):
    """``resume_from_checkpoint`` names a checkpoint that a kill left incomplete."""


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated (no safetensors header)"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"{path.name} is truncated (header of {length} bytes in a {size}-byte file)"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return f"{path.name} has an unreadable safetensors header"
    end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end != size:
        return f"{path.name} is truncated ({size} of {8 + length + end} bytes)"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None when it is complete."""
    folder = Path(path)
    if not folder.is_dir():
        return "not a folder"
    if (folder / CHECKPOINT_MARKER).is_file():
        try:
            json.loads((folder / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
        except ValueError:
            return f"{CHECKPOINT_MARKER} does not parse"
        return None
    if not (folder / TRAINER_STATE).is_file():
        return f"no {TRAINER_STATE} (the save did not finish)"
    for file in sorted(folder.rglob("*")):
        if not file.is_file():
            continue
        where = file.relative_to(folder)
        if file.suffix == ".json":
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return f"{where} is not valid JSON"
        elif file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
            if problem:
                return str(where.parent / problem) if where.parent != Path(".") else problem
        elif file.suffix in _TORCH_ARCHIVES:
            try:
                zipfile.ZipFile(file).close()
            except (zipfile.BadZipFile, OSError):
                return f"{where} is truncated (its archive index does not read)"
    return None


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (largest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), child) for child in folder.iterdir() if (m := _CHECKPOINT.match(child.name))]
    return [child for _, child in sorted(found, reverse=True) if child.is_dir()]


def last_complete_checkpoint(output_dir: str | os.PathLike,
                             warn: Callable[[str], None] | None = None) -> str | None:
    """The newest complete checkpoint of ``output_dir`` (None: there is none); each newer torn one is passed
    over with one ``warn`` line naming it and why."""
    for folder in checkpoints(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        if warn is not None:
            warn(f"prism-plugin: skipping the incomplete checkpoint {folder}: {problem}")
    return None


def require_complete(path: str | os.PathLike) -> None:
    """An :class:`IncompleteCheckpointError` when an explicit ``resume_from_checkpoint`` is torn."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise IncompleteCheckpointError(
            f"resume_from_checkpoint: {path} is incomplete ({problem}); a kill during its save left it so — "
            "resume from an earlier checkpoint, or leave resume_from_checkpoint unset with overwrite_output_dir: "
            "false to take the last complete one")


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then the folders themselves, to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """``path`` holds ``data`` in full or not at all (written beside it, flushed, renamed over it)."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    _fsync_dir(path.parent)


def mark_output_complete(output_dir: str | os.PathLike, step: int) -> None:
    """Write :data:`COMPLETE_MARKER` into ``output_dir``, last of the final save: the folder is a finished run."""
    write_json_atomically(Path(output_dir) / COMPLETE_MARKER, {"global_step": step, "time": time.time()})


class AtomicCheckpointMixin:
    """Mix into a ``transformers.Trainer`` (before it): checkpoints are staged, then renamed into place whole.

    ``save_resume_state(directory)`` is called on every rank with the staged folder, for what a subclass must
    add so that a resumed run continues exactly."""

    def save_resume_state(self, directory: str) -> None:
        """Write this rank's part of what decides the next step (nothing here)."""

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        kill_point("step", self.state.global_step + 1)
        return super().training_step(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        kill_point("save:model", self.state.global_step)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The Trainer's, except for several CPU ranks: it maps the optimiser state to ``args.device``, which is
        ``cpu:<rank>`` there, a location ``torch.load`` cannot restore to; CPU is where it belongs."""
        import torch
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        plain = not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        if checkpoint is None or self.args.world_size == 1 or self.args.device.type != "cpu" or not plain:
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        optimizer, scheduler = os.path.join(checkpoint, OPTIMIZER_NAME), os.path.join(checkpoint, SCHEDULER_NAME)
        if os.path.isfile(optimizer) and os.path.isfile(scheduler):
            self.optimizer.load_state_dict(torch.load(optimizer, map_location="cpu", weights_only=True))
            self.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)  # left by a kill during an earlier save
            os.makedirs(staging_root, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self._get_output_dir = lambda trial=None: staging_root  # the Trainer's save goes into the staging folder
        try:
            super()._save_checkpoint(model, trial)
            self.save_resume_state(staged)
        finally:
            del self._get_output_dir
        kill_point("save:staged", self.state.global_step)
        self.accelerator.wait_for_everyone()  # every rank's part is written
        if self.args.should_save:
            self._commit_checkpoint(Path(staged), Path(final), Path(run_dir))
        self.accelerator.wait_for_everyone()  # no rank goes on before the checkpoint is in place

    def _commit_checkpoint(self, staged: Path, final: Path, run_dir: Path) -> None:
        """Flush, mark and rename ``staged`` to ``final``; then rotate old checkpoints as the Trainer does."""
        from transformers.trainer_utils import rotate_checkpoints

        marker = {"global_step": self.state.global_step, "world_size": self.args.world_size, "time": time.time()}
        (staged / CHECKPOINT_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        _fsync_tree(staged)
        if final.exists():  # a torn folder of the same step, left by an older version
            aside = staged.with_name(staged.name + ".replaced")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(staged, final)
        with contextlib.suppress(OSError):  # the staging folder goes once empty (another rank may still stage)
            os.rmdir(staged.parent)
        _fsync_dir(run_dir)
        kill_point("save:renamed", self.state.global_step)
        best = self.state.best_model_checkpoint
        if best and best.startswith(str(staged.parent)):
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
        rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)


def resolve_resume(training_args: Any, warn: Callable[[str], None] | None = None) -> str | None:
    """``resume_from_checkpoint`` as a checkpoint folder (None: a fresh run): ``true`` becomes the last complete
    checkpoint of ``output_dir``; an explicit folder must be complete (:func:`require_complete`)."""
    resume = training_args.resume_from_checkpoint
    if not resume:
        return None
    if str(resume).lower() == "true":
        found = last_complete_checkpoint(training_args.output_dir, warn)
        if found is None:
            raise IncompleteCheckpointError(
                f"resume_from_checkpoint: true, but {training_args.output_dir} holds no complete checkpoint")
    else:
        require_complete(resume)
        found = str(resume)
    training_args.resume_from_checkpoint = found
    return found
