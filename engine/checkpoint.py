"""Checkpoints of a partition group: per-partition state and the offsets it covers, saved atomically, no pickle.

One file per commit, ``<state_dir>/ckpt-<group>-<seq>.npz`` (``np.savez``, read with ``allow_pickle=False``):
the arrays of every partition's state under ``p<partition>.<name>``, and a JSON document under ``__meta__``
with, per partition, the next offset the state covers. A partition group writes its checkpoint *before* it
commits the same offsets to Kafka, so after a crash the newest checkpoint is either exactly at the committed
offsets or one commit past them (the commit did not happen); :meth:`CheckpointStore.find` takes, per
partition, the checkpoint whose offset equals the committed one. State is per partition, not per group, so a
restart with another grouping (more workers) still finds every partition's state.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streams.durable import atomic_write_bytes, remove_durably

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(?P<group>[A-Za-z0-9_.-]+?)-(?P<seq>\d{12})\.npz$")


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or does not belong to this pipeline."""


@dataclass
class PartitionState:
    """What one input partition's chain needs to resume: the next offset and named state arrays."""

    offset: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """Checkpoints of one partition group in ``root`` (shared by every worker of the pipeline).

    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), "p0.1")
    >>> _ = store.save({0: PartitionState(10, {"mean": np.zeros(2)}), 1: PartitionState(4)})
    >>> found = store.find({0: 10, 1: 3})
    >>> sorted(found), found[0].offset, found[0].arrays["mean"].tolist()
    ([0], 10, [0.0, 0.0])
    """

    def __init__(self, root: str | Path, group: str, *, keep: int = 3) -> None:
        self.root = Path(root)
        self.group = group
        self.keep = max(int(keep), 2)  # the newest may be one commit ahead of Kafka: keep the one before too
        self.root.mkdir(parents=True, exist_ok=True)
        mine = self._files(group)
        self.seq = max((s for s, _ in mine), default=0)

    def _files(self, group: str | None = None) -> list[tuple[int, Path]]:
        out = []
        for p in self.root.glob("ckpt-*.npz"):
            m = _NAME.match(p.name)
            if m and (group is None or m["group"] == group):
                out.append((int(m["seq"]), p))
        return sorted(out)

    def save(self, states: dict[int, PartitionState], extra: dict[str, Any] | None = None) -> Path:
        """Write the next checkpoint of this group durably, then drop all but the newest ``keep``."""
        self.seq += 1
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"group": self.group, "seq": self.seq, "partitions": {}, "extra": extra or {}}
        for p, st in states.items():
            meta["partitions"][str(p)] = {"offset": int(st.offset), "meta": st.meta}
            for name, arr in st.arrays.items():
                a = np.asarray(arr)
                if a.dtype.hasobject:
                    a = a.astype(str)  # object arrays would need pickle
                arrays[f"p{p}.{name}"] = a
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs as bool
        path = self.root / f"ckpt-{self.group}-{self.seq:012d}.npz"
        atomic_write_bytes(path, buf.getvalue())
        old = [p for _, p in self._files(self.group)[: -self.keep]]
        if old:
            remove_durably(old)
        return path

    @staticmethod
    def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            meta = json.loads(arrays.pop("__meta__").tobytes())
        except (OSError, ValueError, KeyError) as err:
            msg = f"checkpoint {path} is unreadable: {err}"
            raise CheckpointError(msg) from None
        return meta, arrays

    def find(self, committed: dict[int, int]) -> dict[int, PartitionState]:
        """Per partition, the newest state of any group saved at exactly its committed offset.

        A partition without one (never checkpointed, or the state folder was lost) is left out: the caller
        starts it from the committed offset with empty state, and says so.
        """
        found: dict[int, tuple[int, PartitionState]] = {}
        for seq, path in reversed(self._files()):
            wanted = [p for p in committed if p not in found]
            if not wanted:
                break
            try:
                meta, arrays = self.read(path)
            except CheckpointError as err:
                log.warning("%s; skipped", err)
                continue
            for p in wanted:
                entry = meta["partitions"].get(str(p))
                if entry is None or int(entry["offset"]) != committed[p]:
                    continue
                prefix = f"p{p}."
                state = PartitionState(int(entry["offset"]),
                                       {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                                       entry.get("meta", {}))
                found[p] = (seq, state)
        return {p: st for p, (_, st) in found.items()}
