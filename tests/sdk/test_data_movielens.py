"""MovieLens loader on the real ml-latest-small CSVs, and its errors on bad input."""
import numpy as np
import pytest

from edgerec.runtime.errors import EdgeRecError
from edgerec.sdk.data import DataError
from edgerec.sdk.data.movielens import load_movielens

RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.0,964981247\n2,1,5.0,964982224\n"
MOVIES = "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,Heat (1995),(no genres listed)\n"
TAGS = "userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n3,1,Pixar,1445714995\n3,2,heist,1445714996\n"


def write_folder(tmp_path, ratings=RATINGS, movies=MOVIES, tags=TAGS):
    for name, text in (("ratings.csv", ratings), ("movies.csv", movies), ("tags.csv", tags)):
        if text is not None:
            (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.movielens
def test_real_csv_counts(movielens_path):
    log = load_movielens(movielens_path)
    assert len(log) == 100_836
    assert log.num_users == 610
    assert len(log.items) == 9_742
    assert np.unique(log.item_ids).size == 9_724              # rated movies
    assert log.devices is None and log.name == "movielens"
    toy_story = int(np.flatnonzero(log.items.item_ids == 1)[0])
    text = log.items.text(toy_story)
    assert text.startswith("Toy Story (1995) Adventure Animation Children Comedy Fantasy")
    assert "pixar" in text                                      # tags.csv joins the item text


def test_small_folder_text_and_implicit_feedback(tmp_path):
    log = load_movielens(write_folder(tmp_path))
    assert log.user_ids.tolist() == [1, 1, 2] and log.item_ids.tolist() == [1, 2, 1]
    assert log.timestamps.tolist() == [964982703, 964981247, 964982224]
    by_id = log.items.text_by_id()
    assert by_id[1] == "Toy Story (1995) Adventure Animation pixar"   # tag de-duplicated case-insensitively
    assert by_id[2] == "Heat (1995) heist"                             # "(no genres listed)" dropped
    assert len(load_movielens(tmp_path, use_tags=False).items.text_by_id()[1].split()) == 5


def test_tags_file_is_optional(tmp_path):
    log = load_movielens(write_folder(tmp_path, tags=None))
    assert log.items.text_by_id()[1] == "Toy Story (1995) Adventure Animation"


@pytest.mark.parametrize("files, message", [
    (dict(ratings="userId,movieId,timestamp\n1,1,5\n"), r"ratings.csv.*missing \['rating'\]"),
    (dict(movies="movieId,name,genres\n1,x,y\n"), r"movies.csv.*missing \['title'\]"),
    (dict(ratings=""), r"header row .*ratings.csv.*empty file"),
    (dict(movies="movieId,title,genres\n"), r"at least one data row in .*movies.csv"),
    (dict(ratings="userId,movieId,rating,timestamp\nalice,1,4.0,5\n"), r"integer userId .*ratings.csv.*alice"),
    (dict(ratings="userId,movieId,rating,timestamp\n1,77,4.0,5\n"), r"rated movieId .*movies.csv.*77"),
    (dict(tags="userId,movieId,timestamp\n1,1,5\n"), r"tags.csv.*missing \['tag'\]"),
    (dict(ratings="userId,movieId,rating,timestamp\n1,1\n"), r"fields on line 2 of .*ratings.csv"),
])
def test_bad_files_raise_a_clear_data_error(tmp_path, files, message):
    with pytest.raises(DataError, match=message) as info:
        load_movielens(write_folder(tmp_path, **files))
    assert isinstance(info.value, EdgeRecError) and str(info.value).startswith("Expected")


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="MovieLens folder"):
        load_movielens(tmp_path / "nope")
    (tmp_path / "ratings.csv").write_text(RATINGS)
    with pytest.raises(DataError, match="movies.csv"):
        load_movielens(tmp_path)
