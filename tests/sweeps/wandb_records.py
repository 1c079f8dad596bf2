"""Read an offline W&B run: the records of its ``run-<id>.wandb`` file and its ``files/`` folder.

wandb >= 0.19 writes the file from its Go core and ships no Python reader. The format is
LevelDB's log format behind a 7-byte header (``:W&B``, a 2-byte magic, a version byte):
32 KiB blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data``, where type 1 is a
whole record and 2/3/4 the first/middle/last piece of one; each record is a protobuf
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """Every protobuf record of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = Path(path).read_bytes()
    if raw[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (header {raw[:7]!r})")
    pos, pending = HEADER, b""
    while pos + CHUNK_HEADER <= len(raw):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # block trailer: padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + CHUNK_HEADER])
        data = raw[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending += data
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What an offline run recorded: run settings, config, history and summary keys, tables."""

    path: Path
    run_id: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    artifact_files: dict[str, list[str]] = field(default_factory=dict)  # artifact name -> paths inside it
    exit_code: int | None = None

    @property
    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row}

    def table(self, prefix: str) -> dict[str, Any]:
        """The JSON of the logged table whose file name starts with ``prefix`` (e.g. ``media/table/test/predictions``)."""
        (name,) = [f for f in self.files if f.startswith(prefix)]
        return json.loads((self.path.parent / "files" / name).read_text())


def read_offline_run(run_file: Path) -> OfflineRun:
    """Collect the records of one ``run-<id>.wandb`` file."""
    run = OfflineRun(path=Path(run_file))
    for record in records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.tags = record.run.run_id, record.run.run_group, list(record.run.tags)
            run.config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "artifact":
            run.artifact_files[record.artifact.name] = [e.path for e in record.artifact.manifest.contents]
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run written under a training run directory (``<run dir>/wandb/``)."""
    return [read_offline_run(f) for f in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))]
