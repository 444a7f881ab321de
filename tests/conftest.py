"""Shared fixtures: the real MovieLens folder (or a clear skip) and a tiny synthetic dataset."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MOVIELENS_ENV = "EDGEREC_MOVIELENS"
MOVIELENS_FILES = ("ratings.csv", "movies.csv", "tags.csv")


@pytest.fixture(scope="session", autouse=True)
def _private_pass_cache(tmp_path_factory):
    """Converter passes cache under a per-run folder: tests never read results left by other runs."""
    if "EDGEREC_CACHE" not in os.environ:
        os.environ["EDGEREC_CACHE"] = str(tmp_path_factory.mktemp("edgerec-pass-cache"))
        yield
        del os.environ["EDGEREC_CACHE"]
    else:
        yield


def movielens_location() -> Path:
    """$EDGEREC_MOVIELENS, else <repo>/../shared/data/movielens-latest-small."""
    env = os.environ.get(MOVIELENS_ENV)
    return Path(env) if env else REPO.parent / "shared" / "data" / "movielens-latest-small"


@pytest.fixture(scope="session")
def movielens_path() -> Path:
    """Path of the ml-latest-small folder; skips (with the reason) when it is not there."""
    path = movielens_location()
    missing = [name for name in MOVIELENS_FILES if not (path / name).is_file()]
    if missing:
        pytest.skip(f"MovieLens ml-latest-small not found at {path} (missing {missing}); "
                    f"set ${MOVIELENS_ENV} to the folder holding ratings.csv/movies.csv/tags.csv")
    return path


@pytest.fixture(scope="session")
def tiny_synthetic_dataset():
    """A small synthetic `RecDataset` (300 users, 400 items, 9,000 events; ~1 s to build)."""
    from edgerec.sdk.data import load_dataset

    return load_dataset("synthetic", num_users=300, num_items=400, num_events=9000, max_seq_len=20,
                        seed=7, progress=False)


@pytest.fixture(scope="session")
def movielens_dataset(movielens_path):
    """The default next-item `RecDataset` on ml-latest-small (seed 0; ~4 s to build)."""
    from edgerec.sdk.data import load_dataset

    return load_dataset(f"movielens:{movielens_path}", progress=False)
