"""InteractionLog: the raw, source-independent input of the dataset builder.

Every data source (synthetic generator, MovieLens loader) produces one of these: an event log
of ``(user_id, item_id, timestamp[, device])`` plus an items table with text. Nothing here is
encoded yet; `edgerec.sdk.data.builder` turns it into a `RecDataset`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from edgerec.runtime.errors import EdgeRecError, expected


class DataError(EdgeRecError, ValueError):
    """A data source (file, folder, generator option) is missing or malformed."""


@dataclass
class ItemsTable:
    """Item metadata, row-aligned.

    Args:
        item_ids: int64 [M] raw item ids (unique).
        titles: item titles.
        tags: per item, a list of tags / genres.
        categories: per item, its primary category name.
    """

    item_ids: np.ndarray
    titles: list[str]
    tags: list[list[str]]
    categories: list[str]

    def __post_init__(self):
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64).reshape(-1)
        n = self.item_ids.size
        for name in ("titles", "tags", "categories"):
            if len(getattr(self, name)) != n:
                raise DataError(expected(f"{n} {name} (one per item)", len(getattr(self, name))))
        if np.unique(self.item_ids).size != n:
            raise DataError(expected("unique item ids in the items table", "duplicates"))

    def __len__(self) -> int:
        return int(self.item_ids.size)

    def text(self, row: int) -> str:
        """Title followed by the tags/genres: the item's text for the content encoder."""
        return " ".join([self.titles[row], *self.tags[row]]).strip()

    def text_by_id(self) -> dict[int, str]:
        return {int(i): self.text(r) for r, i in enumerate(self.item_ids.tolist())}


@dataclass
class InteractionLog:
    """Raw implicit-feedback events, one row per interaction.

    Args:
        user_ids, item_ids, timestamps: int64 [N] (timestamps in unix seconds, UTC).
        items: metadata of (at least) every item in the log.
        devices: optional str [N] device of each event (``"ios"``/``"android"``/``"web"``).
        name: source name (``"synthetic"``, ``"movielens"``).
        meta: free-form JSON-serialisable facts about the source (generator options, paths).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    items: ItemsTable
    devices: np.ndarray | None = None
    name: str = "log"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.user_ids = np.asarray(self.user_ids, dtype=np.int64).reshape(-1)
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64).reshape(-1)
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64).reshape(-1)
        n = self.user_ids.size
        if n == 0:
            raise DataError(expected("at least one interaction", 0))
        if self.item_ids.size != n or self.timestamps.size != n:
            raise DataError(expected("user_ids, item_ids and timestamps of equal length",
                                     (n, self.item_ids.size, self.timestamps.size)))
        if self.devices is not None:
            self.devices = np.asarray(self.devices, dtype=str).reshape(-1)
            if self.devices.size != n:
                raise DataError(expected(f"{n} devices (one per event)", self.devices.size))
        if (self.timestamps < 0).any():
            raise DataError(expected("non-negative unix timestamps", int(self.timestamps.min())))
        unknown = np.setdiff1d(np.unique(self.item_ids), self.items.item_ids)
        if unknown.size:
            raise DataError(expected("every logged item in the items table",
                                     f"{unknown.size} unknown ids, e.g. {unknown[:5].tolist()}"))

    def __len__(self) -> int:
        return int(self.user_ids.size)

    @property
    def num_users(self) -> int:
        return int(np.unique(self.user_ids).size)

    def to_bytes(self) -> bytes:
        """A canonical byte serialisation (determinism checks, cache keys). No pickle."""
        parts = [self.user_ids.tobytes(), self.item_ids.tobytes(), self.timestamps.tobytes()]
        if self.devices is not None:
            parts.append("\n".join(self.devices.tolist()).encode("utf-8"))
        table = {"ids": self.items.item_ids.tolist(), "titles": self.items.titles,
                 "tags": self.items.tags, "categories": self.items.categories}
        parts.append(json.dumps(table, sort_keys=True).encode("utf-8"))
        return b"\x00".join(parts)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()
