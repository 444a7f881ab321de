"""Deterministic synthetic interaction logs: the embedded default data source.

The generator plants the signals every edgerec model family is meant to learn:

* **interest mixtures** — each user has a Dirichlet mixture over item categories;
* **interest drift** — the mixture moves towards a second one over the user's timeline;
* **sequential momentum** — the next event often stays in the previous event's category;
* **popularity skew** — Zipf-like popularity of items within each category;
* **context effects** — the hour of day (4 bands) and the device (``ios``/``android``/``web``)
  shift category preferences;
* **item text** — titles and tags drawn from per-category word lists (content-encoder signal).

Same options and seed → byte-identical log (`InteractionLog.to_bytes`).

Examples:
    >>> log = generate_log(SyntheticConfig(num_users=50, num_items=80, num_events=1000))
    >>> len(log), log.devices[:2].tolist()
    (1000, [...])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from edgerec.runtime.errors import expected

from .log import DataError, InteractionLog, ItemsTable

DEVICES = ("android", "ios", "web")
DEVICE_SHARE = (0.45, 0.35, 0.20)
HOUR_BANDS = ((0, 6), (6, 12), (12, 18), (18, 24))   # night, morning, afternoon, evening

CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "action": ("strike", "fury", "chase", "mission", "siege", "blade", "raid", "agent", "bullet", "storm"),
    "comedy": ("laugh", "wacky", "prank", "goofy", "roommates", "wedding", "holiday", "blunder", "silly", "party"),
    "drama": ("silence", "letters", "family", "memory", "promise", "river", "winter", "secret", "journey", "broken"),
    "scifi": ("galaxy", "robot", "quantum", "orbit", "android", "alien", "nebula", "starship", "cyber", "warp"),
    "horror": ("haunted", "shadow", "curse", "ghost", "crypt", "scream", "ritual", "demon", "asylum", "fog"),
    "romance": ("love", "kiss", "heart", "paris", "summer", "bride", "darling", "forever", "moonlight", "date"),
    "documentary": ("history", "planet", "ocean", "empire", "science", "nature", "truth", "archive", "war", "life"),
    "animation": ("cartoon", "puppy", "dragon", "kingdom", "magic", "toy", "bunny", "island", "pixel", "fairy"),
    "sports": ("goal", "league", "champion", "marathon", "boxing", "coach", "stadium", "rookie", "race", "derby"),
    "music": ("rhythm", "concert", "guitar", "melody", "band", "jazz", "opera", "vinyl", "tour", "chorus"),
    "cooking": ("kitchen", "recipe", "bakery", "spice", "chef", "grill", "pasta", "dessert", "feast", "noodle"),
    "travel": ("voyage", "road", "passport", "desert", "mountain", "harbor", "safari", "train", "coast", "nomad"),
}
SHARED_WORDS = ("the", "last", "great", "little", "return", "night", "city", "golden", "wild", "lost", "new", "old")


@dataclass(frozen=True)
class SyntheticConfig:
    """Options of the synthetic generator (all sizes configurable).

    Args:
        num_users, num_items, num_events: log size (events are spread over users, each user
            gets at least ``min_events_per_user`` and at most half the catalog).
        num_categories: item categories (≤ 12, one word list each).
        seed: RNG seed; the same config always yields the same bytes.
        zipf_exponent: popularity skew within a category (weight ∝ 1 / rank**exponent).
        interest_concentration: Dirichlet concentration of user interests (small = focused users).
        drift: how far interests move towards the user's second mixture by the end of the timeline.
        momentum: probability that an event stays in the previous event's category.
        context_strength: std of the per-(hour band, category) and per-(device, category) log-effects.
        start_timestamp: unix seconds of the first possible event (default 2023-01-01 UTC).
        span_days: how many days the log covers.
    """

    num_users: int = 2000
    num_items: int = 1500
    num_events: int = 60000
    num_categories: int = 12
    seed: int = 0
    min_events_per_user: int = 5
    zipf_exponent: float = 1.0
    interest_concentration: float = 0.3
    drift: float = 0.6
    momentum: float = 0.45
    context_strength: float = 0.9
    start_timestamp: int = 1672531200
    span_days: int = 180

    def __post_init__(self):
        for name in ("num_users", "num_items", "num_events", "num_categories", "min_events_per_user", "span_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise DataError(expected(f"{name} as a positive int", value))
        if not 1 <= self.num_categories <= len(CATEGORY_WORDS):
            raise DataError(expected(f"num_categories in [1, {len(CATEGORY_WORDS)}]", self.num_categories))
        if self.num_items < 2 * self.num_categories:
            raise DataError(expected(f"num_items >= 2 * num_categories ({2 * self.num_categories})", self.num_items))
        if self.num_events < self.min_events_per_user * self.num_users:
            raise DataError(expected(f"num_events >= min_events_per_user * num_users "
                                     f"({self.min_events_per_user * self.num_users})", self.num_events))
        if 2 * self.min_events_per_user > self.num_items:
            raise DataError(expected("num_items >= 2 * min_events_per_user", self.num_items))
        for name in ("drift", "momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(expected(f"{name} in [0, 1]", getattr(self, name)))
        for name in ("zipf_exponent", "interest_concentration", "context_strength"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise DataError(expected(f"{name} as a finite non-negative number", getattr(self, name)))
        if self.interest_concentration == 0:
            raise DataError(expected("interest_concentration > 0", 0))

    @classmethod
    def from_options(cls, seed: int = 0, **options) -> "SyntheticConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise DataError(expected(f"synthetic generator options among {sorted(known)}", unknown))
        return cls(seed=seed, **options)


def _make_items(cfg: SyntheticConfig, rng: np.random.Generator):
    names = list(CATEGORY_WORDS)[: cfg.num_categories]
    categories = rng.permutation(np.arange(cfg.num_items) % cfg.num_categories)
    item_ids = np.arange(1, cfg.num_items + 1, dtype=np.int64)
    titles, tags = [], []
    for row in range(cfg.num_items):
        words = CATEGORY_WORDS[names[categories[row]]]
        picks = rng.choice(len(words), size=3, replace=False)
        shared = SHARED_WORDS[rng.integers(len(SHARED_WORDS))]
        titles.append(f"{shared} {words[picks[0]]} {words[picks[1]]}".title() + f" {row + 1}")
        item_tags = [words[picks[2]], names[categories[row]]]
        if rng.random() < 0.3:  # tag noise from another category
            other = names[rng.integers(cfg.num_categories)]
            item_tags.append(CATEGORY_WORDS[other][rng.integers(len(CATEGORY_WORDS[other]))])
        tags.append(item_tags)
    # Zipf popularity within each category: a random permutation assigns the ranks.
    members, cumulative = [], []
    for c in range(cfg.num_categories):
        ids = np.flatnonzero(categories == c)
        ids = ids[rng.permutation(ids.size)]
        weights = 1.0 / np.arange(1, ids.size + 1) ** cfg.zipf_exponent
        members.append(ids)
        cumulative.append(np.cumsum(weights) / weights.sum())
    table = ItemsTable(item_ids, titles, tags, [names[c] for c in categories])
    return table, categories, members, cumulative


def _events_per_user(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    activity = rng.lognormal(0.0, 0.8, cfg.num_users)
    extra = rng.multinomial(cfg.num_events - cfg.min_events_per_user * cfg.num_users, activity / activity.sum())
    return np.minimum(cfg.min_events_per_user + extra, cfg.num_items // 2)


def _timestamps(cfg: SyntheticConfig, rng: np.random.Generator, count: int) -> np.ndarray:
    """Sessions of events a few minutes apart, starting around the user's preferred hour."""
    peak_hour = rng.choice([8.0, 13.0, 20.0, 23.0], p=[0.2, 0.2, 0.45, 0.15]) + rng.normal(0, 1.0)
    first_day = rng.uniform(0, cfg.span_days * 0.4)
    mean_gap_days = max(cfg.span_days * 0.55 / max(count / 4.0, 1.0), 0.05)
    sizes = 1 + rng.geometric(0.3, size=count)                  # at most `count` sessions
    sessions = int(np.searchsorted(np.cumsum(sizes), count)) + 1
    sizes = sizes[:sessions]
    sizes[-1] -= sizes.sum() - count
    days = first_day + np.concatenate(([0.0], np.cumsum(0.3 + rng.exponential(mean_gap_days, sessions - 1))))
    hours = (peak_hour + rng.normal(0, 2.5, sessions)) % 24
    starts = cfg.start_timestamp + np.floor(days).astype(np.int64) * 86400 + (hours * 3600).astype(np.int64)
    session_of = np.repeat(np.arange(sessions), sizes)
    gaps = rng.integers(30, 900, count)
    first = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    gaps[first] = 0
    offsets = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], sizes)
    return starts[session_of] + offsets


def generate_log(config: SyntheticConfig | None = None) -> InteractionLog:
    """Generate the synthetic interaction log and items table for ``config``."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    items, item_category, members, cumulative = _make_items(cfg, rng)
    C = cfg.num_categories
    hour_effect = rng.normal(0, cfg.context_strength, (len(HOUR_BANDS), C))
    device_effect = rng.normal(0, cfg.context_strength, (len(DEVICES), C))
    band_of_hour = np.repeat(np.arange(len(HOUR_BANDS)), 6)
    counts = _events_per_user(cfg, rng)
    users, item_rows, stamps, devices = [], [], [], []
    for user in range(cfg.num_users):
        n = int(counts[user])
        start_mix = rng.dirichlet(np.full(C, cfg.interest_concentration))
        end_mix = rng.dirichlet(np.full(C, cfg.interest_concentration))
        main_device = rng.choice(len(DEVICES), p=DEVICE_SHARE)
        times = np.sort(_timestamps(cfg, rng, n))
        hours = (times // 3600) % 24
        device = np.where(rng.random(n) < 0.85, main_device, rng.integers(len(DEVICES), size=n))
        uniforms, stay = rng.random((n, 3)), rng.random(n) < cfg.momentum
        t = np.arange(n)[:, None] / max(n - 1, 1)
        mix = (1 - cfg.drift * t) * start_mix + cfg.drift * t * end_mix
        weights = mix * np.exp(hour_effect[band_of_hour[hours]] + device_effect[device])
        cum = np.cumsum(weights, axis=1)
        fresh = np.minimum((cum < uniforms[:, :1] * cum[:, -1:]).sum(axis=1), C - 1)
        cats = fresh.copy()
        for e in range(1, n):                                    # momentum: stay in the last category
            if stay[e]:
                cats[e] = cats[e - 1]
        first_try = np.empty(n, dtype=np.int64)
        for c in np.unique(cats).tolist():
            at = np.flatnonzero(cats == c)
            pos = np.minimum(np.searchsorted(cumulative[c], uniforms[at, 1], side="right"), members[c].size - 1)
            first_try[at] = members[c][pos]
        seen: set[int] = set()
        for e, row in enumerate(first_try.tolist()):
            if row in seen:
                row = _pick_unseen(members[cats[e]], cumulative[cats[e]], rng.random(), seen, rng)
            if row is None:   # category exhausted for this user: any unseen item
                pool = np.setdiff1d(np.arange(cfg.num_items), np.fromiter(seen, dtype=np.int64))
                row = int(pool[int(uniforms[e, 2] * pool.size)])
            seen.add(row)
            item_rows.append(row)
        users.append(np.full(n, user + 1, dtype=np.int64))
        stamps.append(times)
        devices.append(device)
    user_ids = np.concatenate(users)
    item_ids = items.item_ids[np.asarray(item_rows)]
    timestamps = np.concatenate(stamps)
    device_names = np.asarray(DEVICES)[np.concatenate(devices)]
    order = np.lexsort((item_ids, user_ids, timestamps))   # a log is in time order
    return InteractionLog(user_ids[order], item_ids[order], timestamps[order], items,
                          devices=device_names[order], name="synthetic",
                          meta={"generator": asdict(cfg)})


def _pick_unseen(ids: np.ndarray, cumulative: np.ndarray, u: float, seen: set, rng) -> int | None:
    for attempt in range(8):
        pos = min(int(np.searchsorted(cumulative, u, side="right")), ids.size - 1)
        if int(ids[pos]) not in seen:
            return int(ids[pos])
        u = rng.random()
    unseen = [int(i) for i in ids if int(i) not in seen]
    if not unseen:
        return None
    return unseen[int(u * len(unseen))]
