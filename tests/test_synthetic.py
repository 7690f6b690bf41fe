"""The synthetic reviews: deterministic, balanced, noisy, and neither trivial nor hopeless."""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from stages.data.synthetic import generate_reviews


def test_same_seed_same_reviews_other_seed_other_reviews() -> None:
    assert generate_reviews(200, seed=7) == generate_reviews(200, seed=7)
    assert generate_reviews(200, seed=7)[0] != generate_reviews(200, seed=8)[0]


def test_labels_cover_all_stars_roughly_evenly() -> None:
    _, labels = generate_reviews(5000, seed=0)
    counts = Counter(labels)
    assert sorted(counts) == [0, 1, 2, 3, 4]
    assert min(counts.values()) > 800


def test_label_noise_moves_labels_to_a_neighbouring_star() -> None:
    texts_clean, clean = generate_reviews(4000, seed=3, label_noise=0.0)
    texts_noisy, noisy = generate_reviews(4000, seed=3, label_noise=0.2)
    assert texts_clean == texts_noisy
    moved = np.asarray(clean) != np.asarray(noisy)
    assert 0.12 < moved.mean() < 0.22  # 20% drawn, minus moves clipped at 1 and 5 stars
    assert np.all(np.abs(np.asarray(clean) - np.asarray(noisy)) <= 1)


def test_lengths_vary_and_scale() -> None:
    short, _ = generate_reviews(2000, seed=1)
    long, _ = generate_reviews(2000, seed=1, length_scale=3.5)
    lengths = np.array([len(t) for t in short])
    assert lengths.min() < 60 and lengths.max() > 400
    assert np.mean([len(t) for t in long]) > 2.5 * lengths.mean()


def test_a_bag_of_words_baseline_lands_between_chance_and_perfect() -> None:
    texts, labels = generate_reviews(3000, seed=11)
    vectorizer = CountVectorizer()
    train = vectorizer.fit_transform(texts[:2000])
    test = vectorizer.transform(texts[2000:])
    accuracy = LogisticRegression(max_iter=2000).fit(train, labels[:2000]).score(test, labels[2000:])
    assert 0.35 < accuracy < 0.8, accuracy
