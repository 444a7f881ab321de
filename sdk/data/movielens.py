"""Loader for the MovieLens ``ml-latest-small`` CSV layout (stdlib csv + numpy, no pandas).

Files read from the folder:

* ``ratings.csv`` — ``userId,movieId,rating,timestamp``: every rating is an interaction
  (implicit feedback; the rating value is ignored).
* ``movies.csv`` — ``movieId,title,genres`` (genres ``|``-separated, ``(no genres listed)`` = none).
* ``tags.csv`` — ``userId,movieId,tag,timestamp`` (optional): user tags join the item text.

Item text = title + genres + distinct tags (in first-seen order). Any problem names the file:
missing folder/file, missing column, empty file, a non-integer id, a rated movie missing from
movies.csv.

Examples:
    >>> log = load_movielens("../shared/data/movielens-latest-small")
    >>> len(log), log.num_users, len(log.items)
    (100836, 610, 9742)
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import expected

from .log import DataError, InteractionLog, ItemsTable

ENV_VAR = "EDGEREC_MOVIELENS"
RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
MOVIES_COLUMNS = ("movieId", "title", "genres")
TAGS_COLUMNS = ("userId", "movieId", "tag", "timestamp")
NO_GENRES = "(no genres listed)"


def default_path() -> Path:
    """$EDGEREC_MOVIELENS, else ``<repo>/../shared/data/movielens-latest-small``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "movielens-latest-small"


def _read_csv(path: Path, columns: tuple[str, ...]) -> dict[str, list[str]]:
    """Columns of a CSV as lists of strings; typed errors naming the file."""
    if not path.is_file():
        raise DataError(expected(f"the MovieLens file {path.name} in {path.parent}", "no such file"))
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(expected(f"a header row {list(columns)} in {path}", "an empty file"))
            header = [h.strip().lstrip("\ufeff") for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(expected(f"columns {list(columns)} in {path}", f"header {header} (missing {missing})"))
            index = [header.index(c) for c in columns]
            out = {c: [] for c in columns}
            lists = [out[c] for c in columns]
            width = max(index) + 1
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) < width:
                    raise DataError(expected(f"{len(header)} fields on line {line_no} of {path}", row))
                for target, i in zip(lists, index):
                    target.append(row[i])
    except UnicodeDecodeError as err:
        raise DataError(expected(f"UTF-8 text in {path}", str(err))) from None
    if not out[columns[0]]:
        raise DataError(expected(f"at least one data row in {path}", "a header only"))
    return out


def _ints(values: list[str], column: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64)
    except ValueError:
        bad = next(v for v in values if not v.strip().lstrip("-").isdigit())
        raise DataError(expected(f"integer {column} values in {path}", bad)) from None


def load_movielens(path: str | os.PathLike | None = None, *, use_tags: bool = True) -> InteractionLog:
    """Read an ml-latest-small folder into an `InteractionLog` (implicit feedback)."""
    folder = Path(path) if path else default_path()
    if not folder.is_dir():
        raise DataError(expected(f"a MovieLens folder with ratings.csv and movies.csv (set ${ENV_VAR} "
                                 "or pass movielens:PATH)", str(folder)))
    ratings_path, movies_path, tags_path = folder / "ratings.csv", folder / "movies.csv", folder / "tags.csv"
    ratings = _read_csv(ratings_path, RATINGS_COLUMNS)
    movies = _read_csv(movies_path, MOVIES_COLUMNS)
    user_ids = _ints(ratings["userId"], "userId", ratings_path)
    item_ids = _ints(ratings["movieId"], "movieId", ratings_path)
    try:
        timestamps = np.asarray(ratings["timestamp"], dtype=np.float64).astype(np.int64)
    except ValueError:
        raise DataError(expected(f"numeric timestamp values in {ratings_path}", ratings["timestamp"][:3])) from None
    movie_ids = _ints(movies["movieId"], "movieId", movies_path)
    if np.unique(movie_ids).size != movie_ids.size:
        raise DataError(expected(f"unique movieId values in {movies_path}", "duplicates"))
    genres = [[] if g.strip() in ("", NO_GENRES) else [x.strip() for x in g.split("|") if x.strip()]
              for g in movies["genres"]]
    tags = [list(g) for g in genres]
    if use_tags and tags_path.exists():
        tag_rows = _read_csv(tags_path, TAGS_COLUMNS)
        row_of = {int(m): r for r, m in enumerate(movie_ids.tolist())}
        seen = [set() for _ in tags]
        for movie, tag in zip(_ints(tag_rows["movieId"], "movieId", tags_path).tolist(), tag_rows["tag"]):
            tag, row = tag.strip(), row_of.get(movie)
            if row is not None and tag and tag.lower() not in seen[row]:
                seen[row].add(tag.lower())
                tags[row].append(tag)
    unknown = np.setdiff1d(np.unique(item_ids), movie_ids)
    if unknown.size:
        raise DataError(expected(f"every rated movieId of {ratings_path} in {movies_path}",
                                 f"{unknown.size} missing, e.g. {unknown[:5].tolist()}"))
    categories = [g[0] if g else "" for g in genres]
    items = ItemsTable(movie_ids, list(movies["title"]), tags, categories)
    return InteractionLog(user_ids, item_ids, timestamps, items, name="movielens",
                          meta={"path": str(folder), "use_tags": use_tags})
