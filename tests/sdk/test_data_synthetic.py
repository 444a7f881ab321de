"""Synthetic generator: determinism, configuration errors, and that the planted signals are there."""
import numpy as np
import pytest

from edgerec.sdk.data import DataError
from edgerec.sdk.data.synthetic import CATEGORY_WORDS, DEVICES, SyntheticConfig, generate_log

SMALL = dict(num_users=400, num_items=480, num_events=12000)


def _log(**options):
    return generate_log(SyntheticConfig(**{**SMALL, "seed": 3, **options}))


@pytest.fixture(scope="module")
def log():
    return _log()


def _categories(log):
    names = sorted(set(log.items.categories))
    row = {int(i): r for r, i in enumerate(log.items.item_ids.tolist())}
    cat = np.array([names.index(log.items.categories[row[int(i)]]) for i in log.item_ids.tolist()])
    return cat, len(names)


def _weighted_tv(groups, cat, num_cats):
    """Impression-weighted total-variation distance of each group's category mix from the global one."""
    table = np.zeros((groups.max() + 1, num_cats))
    np.add.at(table, (groups, cat), 1)
    share = table / np.maximum(table.sum(1, keepdims=True), 1)
    overall = table.sum(0) / table.sum()
    weight = table.sum(1) / table.sum()
    return float((weight * 0.5 * np.abs(share - overall).sum(1)).sum())


def test_same_seed_same_bytes_different_seed_different(log):
    again = _log()
    assert again.to_bytes() == log.to_bytes()
    assert again.fingerprint() == log.fingerprint()
    other = _log(seed=4)
    assert other.to_bytes() != log.to_bytes()


def test_log_shape_and_ranges(log):
    assert len(log) == SMALL["num_events"]
    assert log.num_users == SMALL["num_users"]
    assert len(log.items) == SMALL["num_items"]
    assert set(log.devices.tolist()) == set(DEVICES)
    assert np.all(np.diff(log.timestamps) >= 0)                      # a log is in time order
    users, counts = np.unique(log.user_ids, return_counts=True)
    assert counts.min() >= 5
    pairs = log.user_ids * 10_000 + log.item_ids                      # implicit feedback: no repeats
    assert np.unique(pairs).size == pairs.size
    cfg = SyntheticConfig()
    assert (cfg.num_users, cfg.num_items, cfg.num_events) == (2000, 1500, 60000)


def test_item_text_uses_category_words(log):
    for row in range(0, len(log.items), 37):
        category = log.items.categories[row]
        text = log.items.text(row).lower().split()
        assert category in text
        assert sum(w in CATEGORY_WORDS[category] for w in text) >= 2


def test_popularity_is_skewed(log):
    counts = np.sort(np.unique(log.item_ids, return_counts=True)[1])[::-1]
    top_decile = counts[: len(log.items) // 10].sum() / counts.sum()
    assert top_decile > 0.25                                         # uniform would be ~0.10


def test_users_stick_to_their_interests(log):
    cat, num_cats = _categories(log)
    order = np.lexsort((log.item_ids, log.timestamps, log.user_ids))
    users, cat = log.user_ids[order], cat[order]
    hits = total = 0
    for user in np.unique(users)[:200]:
        seq = cat[users == user]
        for e in range(5, seq.size):
            hits += seq[e] == np.bincount(seq[:e], minlength=num_cats).argmax()
            total += 1
    base = ((np.bincount(cat, minlength=num_cats) / cat.size) ** 2).sum()
    assert hits / total > 3 * base                                   # measured ~0.37 vs ~0.09


def test_hour_and_device_shift_category_preferences(log):
    flat = _log(context_strength=0.0)
    results = {}
    for name, current in (("context", log), ("flat", flat)):
        cat, num_cats = _categories(current)
        band = ((current.timestamps // 3600) % 24) // 6
        device = np.searchsorted(np.asarray(DEVICES), current.devices)
        results[name] = (_weighted_tv(band, cat, num_cats), _weighted_tv(device, cat, num_cats))
    assert results["context"][0] > 2 * results["flat"][0]
    assert results["context"][1] > 2 * results["flat"][1]


def test_interests_drift_over_time():
    def half_shift(current):
        cat, num_cats = _categories(current)
        order = np.lexsort((current.item_ids, current.timestamps, current.user_ids))
        users, cat = current.user_ids[order], cat[order]
        shifts = []
        for user in np.unique(users):
            seq = cat[users == user]
            h = seq.size // 2
            a = np.bincount(seq[:h], minlength=num_cats) / h
            b = np.bincount(seq[h:], minlength=num_cats) / (seq.size - h)
            shifts.append(0.5 * np.abs(a - b).sum())
        return float(np.mean(shifts))

    assert half_shift(_log(drift=1.0)) > half_shift(_log(drift=0.0)) + 0.05


@pytest.mark.parametrize("options, message", [
    (dict(num_users=0), "num_users as a positive int"),
    (dict(num_categories=13), "num_categories"),
    (dict(num_users=100, num_events=100), "num_events >= min_events_per_user"),
    (dict(momentum=1.5), "momentum in"),
    (dict(num_items=10), "num_items >= 2 \\* num_categories"),
])
def test_bad_options_raise_data_error(options, message):
    with pytest.raises(DataError, match=message):
        SyntheticConfig(**options)


def test_unknown_option_is_named():
    with pytest.raises(DataError, match="num_userz"):
        SyntheticConfig.from_options(num_userz=3)


def test_generator_scales_to_a_large_catalogue_deterministically():
    options = dict(num_users=10_000, num_items=100_000, num_events=200_000, seed=11)
    log = generate_log(SyntheticConfig(**options))
    assert len(log) == options["num_events"] and log.num_users == options["num_users"]
    assert len(log.items) == options["num_items"]
    pairs = log.user_ids * (options["num_items"] + 1) + log.item_ids
    assert np.unique(pairs).size == pairs.size                       # still no repeats per user
    assert np.all(np.diff(log.timestamps) >= 0)
    counts = np.sort(np.unique(log.item_ids, return_counts=True)[1])[::-1]
    assert counts[: options["num_items"] // 100].sum() / counts.sum() > 0.1   # skewed: uniform would be 0.01
    assert generate_log(SyntheticConfig(**options)).fingerprint() == log.fingerprint()


def test_event_count_is_exact_when_active_users_hit_the_cap():
    # 30 items: nobody may see more than 15, so the lognormal's heavy users overflow and are redistributed
    log = _log(num_users=60, num_items=30, num_events=700, num_categories=3)
    users, counts = np.unique(log.user_ids, return_counts=True)
    assert len(log) == 700 and counts.max() <= 15 and counts.min() >= 5
