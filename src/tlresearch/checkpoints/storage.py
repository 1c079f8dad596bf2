"""Checkpoint files: written atomically, read safely.

Lightning 2.6 saves through fsspec: on a local disk the checkpoint is written to a temporary
file in the *system* temp folder and then ``shutil.move``-d over the target. When that folder is
on another file system than the run directory (a tmpfs ``/tmp``, a network home), the move is a
copy straight into ``last.ckpt``: a crash or a full disk mid-copy leaves a truncated
``last.ckpt``, and nothing is fsync-ed. :class:`AtomicCheckpointIO` writes the temporary file
beside the target, fsyncs it and renames it (:func:`tlresearch.core.files.atomic_write`), so
``last.ckpt`` is always the previous complete checkpoint or the new complete one.

Reading: Lightning's ``trainer.fit(ckpt_path=...)`` passes ``weights_only=None`` to
``torch.load`` (whose default is ``True`` from torch 2.6 on); :class:`AtomicCheckpointIO` makes
it explicit, so a checkpoint never runs pickled code whatever the torch version.
:func:`read_checkpoint` is the one reader of our own code, with the error messages users see.

Frozen weights are written once per run. A linear probe writes ``last.ckpt`` after every epoch
and the best checkpoint at every improvement; rewriting the unchanged frozen backbone each time
(45 MB for a ResNet-18, 100 MB for a ResNet-50, fsync-ed) was most of a cached probe's epoch.
The module names the state_dict entries that are frozen now (the :data:`FROZEN_KEYS` entry its
``on_save_checkpoint`` adds); :class:`AtomicCheckpointIO` writes them once to
``frozen-<id>.pt`` beside the checkpoint, and the checkpoint refers to that file
(:data:`FROZEN_STATE`: file, id, keys). Every reader here puts the tensors back, so what a
reader gets is the complete checkpoint. When fit ends, :meth:`AtomicCheckpointIO.make_self_contained`
rewrites the checkpoints as complete files and deletes the frozen-state files: a finished run's
checkpoints stand alone (``torch.load`` and Lightning's ``load_from_checkpoint`` see every
tensor); only a run that was killed keeps them, for ``resume=auto``.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from tlresearch.core.errors import ConfigError
from tlresearch.core.files import OutputWriteError, atomic_write

log = logging.getLogger(__name__)

#: Checkpoint entry the module adds in ``on_save_checkpoint``: the state_dict keys that are
#: frozen now (unchanged since the model was built or loaded). A hint to the writer, never written.
FROZEN_KEYS = "frozen_state_keys"
#: Checkpoint entry that refers to the frozen-state file: ``{"file", "id", "keys", "order"}``.
FROZEN_STATE = "frozen_state"
_FROZEN_FILE_GLOB = "frozen-*.pt"
_FROZEN_FILE_NAME = re.compile(r"frozen-[0-9a-f]{1,64}\.pt")


class CheckpointWriteError(OutputWriteError):
    """A checkpoint could not be written (disk full, read-only or missing folder)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO with atomic local writes, ``weights_only=True`` reads and
    frozen tensors written once per run (see the module docstring).

    Args:
        frozen_once: write the module's frozen tensors once per run (``False``: every checkpoint
            is complete when written, for tools that read checkpoint files during fit).
    """

    def __init__(self, frozen_once: bool = True) -> None:
        super().__init__()
        self.frozen_once = frozen_once
        self._frozen_files: dict[Path, _FrozenStateFile] = {}  # per checkpoint folder

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        frozen_keys = checkpoint.get(FROZEN_KEYS)
        checkpoint = {k: v for k, v in checkpoint.items() if k != FROZEN_KEYS}
        if "://" in str(path):  # remote storage: fsspec's transaction is the atomic write there
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options.")
        try:
            if frozen_keys and self.frozen_once:
                checkpoint = self._refer_to_frozen_state(checkpoint, Path(path).parent, frozen_keys)
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        except OSError as exc:
            cause = exc.__cause__ if isinstance(exc, OutputWriteError) and exc.__cause__ is not None else exc
            raise CheckpointWriteError(
                f"Could not write the checkpoint {path} ({getattr(cause, 'strerror', None) or cause}). The previous "
                "checkpoint under that name, if any, is intact. Free disk space or make the run directory writable "
                "(or point hydra.run.dir at another disk), then continue with resume=auto."
            ) from cause

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)
        return attach_frozen_state(checkpoint, path, map_location=map_location)

    def _refer_to_frozen_state(self, checkpoint: dict[str, Any], folder: Path, frozen_keys: list[str]) -> dict[str, Any]:
        """``checkpoint`` with its frozen tensors replaced by a reference to this folder's
        frozen-state file, written now unless the one written earlier still holds them."""
        state = checkpoint["state_dict"]
        frozen = {k: state[k] for k in frozen_keys if k in state}
        if not frozen:
            return checkpoint
        written = self._frozen_files.get(folder)
        if written is None or not written.holds(frozen):
            written = _FrozenStateFile.write(folder, frozen)
            self._frozen_files[folder] = written
        reference = {"file": written.path.name, "id": written.id, "keys": list(frozen), "order": list(state)}
        rest = {k: v for k, v in state.items() if k not in frozen}
        return {**checkpoint, "state_dict": rest, FROZEN_STATE: reference}

    def make_self_contained(self, folders: Iterable[str | os.PathLike] = ()) -> list[Path]:
        """Rewrite the checkpoints that refer to a frozen-state file as complete files, then
        delete the frozen-state files; return the rewritten checkpoints.

        Looks in ``folders`` (the run's checkpoint folders: a resumed run may end without writing,
        leaving an earlier process's references) and wherever this writer put a frozen-state file.
        Called when fit ends, on one process. A checkpoint that cannot be rewritten (a full disk)
        is left as it is with the frozen-state files, and a warning says so: it still loads.
        """
        rewritten: list[Path] = []
        for folder in {*map(Path, folders), *self._frozen_files}:
            try:
                for path in sorted(folder.glob("*.ckpt")):
                    if FROZEN_STATE in _load_checkpoint_file(path, str(path), map_location="cpu", mmap=True):
                        self.save_checkpoint(read_checkpoint(path, str(path)), path)
                        rewritten.append(path)
            except (ConfigError, OSError) as exc:
                log.warning("Could not make the checkpoints in %s self-contained (%s). They still load while the "
                            "frozen-state files (%s) stay beside them.", folder, exc, _FROZEN_FILE_GLOB)
                continue
            for file in folder.glob(_FROZEN_FILE_GLOB):
                file.unlink(missing_ok=True)
            self._frozen_files.pop(folder, None)
        return sorted(rewritten)


@dataclass
class _FrozenStateFile:
    """A frozen-state file this process wrote, and the tensors it holds.

    It keeps the tensors themselves: their storage cannot be freed and reused while referenced,
    so an unchanged data pointer and version counter (which in-place writes bump, and which a
    state_dict's detached tensors share with the parameters) mean unchanged values.
    """

    path: Path
    id: str
    tensors: dict[str, torch.Tensor]
    versions: dict[str, int | None]

    @classmethod
    def write(cls, folder: Path, tensors: dict[str, torch.Tensor]) -> _FrozenStateFile:
        file_id = uuid.uuid4().hex
        path = folder / f"frozen-{file_id[:12]}.pt"
        atomic_write(path, lambda tmp: torch.save({"id": file_id, "state_dict": tensors}, tmp))
        return cls(path, file_id, dict(tensors), {k: _version_of(t) for k, t in tensors.items()})

    def holds(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Whether the file holds the current values of all of ``tensors``."""
        return self.path.is_file() and all(self._unchanged(k, t) for k, t in tensors.items())

    def _unchanged(self, key: str, tensor: torch.Tensor) -> bool:
        saved, version = self.tensors.get(key), self.versions.get(key)
        return (
            saved is not None
            and version is not None
            and tensor.data_ptr() == saved.data_ptr()
            and _version_of(tensor) == version
            and (tensor.shape, tensor.stride(), tensor.dtype, tensor.device) == (saved.shape, saved.stride(), saved.dtype, saved.device)
        )


def _version_of(tensor: torch.Tensor) -> int | None:
    """The tensor's version counter; None for an inference tensor (created under
    ``torch.inference_mode``), which has none: it then counts as changed at every save."""
    return None if tensor.is_inference() else tensor._version


def read_checkpoint(path: str | os.PathLike, key: str = "ckpt_path", *, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; any failure becomes a ConfigError naming ``key``.

    Tensors kept in the run's frozen-state file are put back (see the module docstring).
    ``mmap=True`` maps the tensors instead of reading them, for a cheap look at the metadata.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}={str(path)!r} does not exist; pass a checkpoint written by tlresearch.train.")
    ckpt = _load_checkpoint_file(file, f"{key}={str(path)!r}", map_location=map_location, mmap=mmap)
    return attach_frozen_state(ckpt, file, key, map_location=map_location, mmap=mmap)


def _load_checkpoint_file(file: Path, what: str, *, map_location: Any, mmap: bool) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of one file, with the errors users see; ``what`` names it."""
    if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; its directory is written last
        if _is_pickle(file):
            raise ConfigError(
                f"{what} is refused: it is a bare pickle, not the zip archive torch.save writes, and loading a pickle "
                f"can run code. {_USE_ANOTHER}"
            )
        raise ConfigError(
            f"{what} could not be read as a PyTorch checkpoint: it is not a complete zip archive, as "
            f"torch.save writes them: it was cut short (a crash, a full disk or a partial copy). {_USE_ANOTHER}"
        )
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_global(exc)
        if unsafe is None:
            raise _unreadable(what, exc) from exc
        raise ConfigError(
            f"{what} is refused: it holds objects other than tensors and plain data, whose loading "
            f"could run code ({unsafe}). Use a checkpoint written by tlresearch.train (or one from a source you trust, "
            "converted to a plain state_dict)."
        ) from exc
    except Exception as exc:
        raise _unreadable(what, exc) from exc
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{what} is not a Lightning checkpoint (it holds a {type(ckpt).__name__}).")
    return ckpt


def _is_pickle(file: Path) -> bool:
    """Whether ``file`` starts as a pickle of protocol 2 or later does (``PROTO`` opcode)."""
    with open(file, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def attach_frozen_state(checkpoint: dict[str, Any], path: Any, key: str = "ckpt_path", *, map_location: Any = "cpu",
                        mmap: bool = False) -> dict[str, Any]:
    """``checkpoint`` with the tensors it keeps in its run's frozen-state file put back into its
    state_dict, in their original order (unchanged when it has none)."""
    reference = checkpoint.get(FROZEN_STATE)
    if reference is None:
        return checkpoint
    what = f"{key}={str(path)!r}"
    file = _frozen_state_file(reference, Path(path), what)
    if not file.is_file():
        raise ConfigError(
            f"{what} keeps the weights of its frozen layers in {reference['file']}, written once per run beside it, "
            f"which is missing. Copy {reference['file']} from the run's checkpoints/ folder next to it (the checkpoints "
            "of a run that finished are self-contained; this one comes from a run that was stopped)."
        )
    frozen = _load_checkpoint_file(file, f"{what}: its frozen-state file {file}", map_location=map_location, mmap=mmap)
    tensors = frozen.get("state_dict") or {}
    missing = [k for k in reference["keys"] if k not in tensors]
    if frozen.get("id") != reference["id"] or missing:
        raise ConfigError(
            f"{what} refers to frozen weights that {file} does not hold (file id {frozen.get('id')!r}, expected "
            f"{reference['id']!r}; {len(missing)} tensors missing): that file belongs to another run. Use the "
            "checkpoints/ folder of the run as it was written."
        )
    state = {**checkpoint["state_dict"], **{k: tensors[k] for k in reference["keys"]}}
    complete = {k: v for k, v in checkpoint.items() if k != FROZEN_STATE}
    complete["state_dict"] = {k: state[k] for k in reference["order"]}
    return complete


def _frozen_state_file(reference: Any, checkpoint: Path, what: str) -> Path:
    """The frozen-state file ``reference`` names: a ``frozen-<id>.pt`` in the checkpoint's own
    folder, never a path out of it (``..``, absolute, a symlink elsewhere): a crafted checkpoint
    must not make us read, or later delete, another file."""
    fields = {"file": str, "id": str, "keys": list, "order": list}
    if not isinstance(reference, dict) or not all(isinstance(reference.get(k), t) for k, t in fields.items()):
        raise ConfigError(f"{what} is refused: its {FROZEN_STATE} entry is malformed ({str(reference)[:100]}). {_USE_ANOTHER}")
    name, folder = reference["file"], checkpoint.parent
    file = folder / name
    if not _FROZEN_FILE_NAME.fullmatch(name) or (file.exists() and file.resolve().parent != folder.resolve()):
        raise ConfigError(
            f"{what} is refused: it names {name!r} as its frozen-state file, which must be a frozen-<id>.pt file in the "
            f"checkpoint's own folder ({folder}), not a path or a link out of it. {_USE_ANOTHER}"
        )
    return file


def _unsafe_global(exc: BaseException) -> str | None:
    """The line of a weights-only load failure that names a refused global (code), if it is one."""
    return next((line.strip() for line in str(exc).splitlines() if "global" in line.lower() and "unsupported" in line.lower()), None)


_USE_ANOTHER = "Pass a complete checkpoint (e.g. another file of that run's checkpoints/ folder)."

#: Boilerplate lines of torch's weights-only errors, left out of our one-line reason.
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _unreadable(what: str, exc: BaseException) -> ConfigError:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if not line.startswith(_TORCH_BOILERPLATE)), lines[0] if lines else "")
    return ConfigError(
        f"{what} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {reason[:200]}). "
        f"Is the file complete (not truncated by a crash or a partial copy)? {_USE_ANOTHER}"
    )
