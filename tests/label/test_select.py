"""The selection rules of `semiclust label suggest` (semiclust/label/select.py) on synthetic Gaussian mixtures: one
pick per well-separated blob, at its most typical point; a duplicated image never picked twice (nor a twin of a
labeled one); excluded rows never picked and counted as labels of their cluster; the same picks for the same seed;
the order to label spread over the pool, not the largest clusters first; and, after a trained run, the hesitant
typical image of each cluster rather than an outlier."""
from __future__ import annotations

import numpy as np
import pytest

from semiclust.label.select import cover, margins, typical_picks, typicality, uncertain_picks


def blobs(count: int = 8, per_blob: int = 30, dims: int = 16, spread: float = 0.05, seed: int = 0):
    """`count` tight Gaussian blobs around random directions far apart; features and each row's blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, dims))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    blob = np.repeat(np.arange(count), per_blob)
    return centres[blob] + spread * rng.normal(size=(len(blob), dims)), blob


def test_one_pick_per_well_separated_blob_at_its_most_typical_point():
    features, blob = blobs()
    picks = typical_picks(features, 8, seed=0)
    assert sorted(blob[picks.indices].tolist()) == list(range(8))  # every blob once
    assert len(set(picks.cluster.tolist())) == 8
    for row in picks.indices:  # the pick lies among the densest fifth of its blob
        members = np.flatnonzero(blob == blob[row])
        density = typicality(features[members] / np.linalg.norm(features[members], axis=1, keepdims=True))
        assert density[members.tolist().index(row)] >= np.quantile(density, 0.8)


def test_more_picks_than_blobs_spread_over_all_of_them():
    """16 picks of 8 blobs (16 clusters: k-means cuts each blob into one to three): every blob gets one or more,
    none more than three, no row twice."""
    features, blob = blobs()
    picks = typical_picks(features, 16, seed=0)
    per_blob = np.bincount(blob[picks.indices], minlength=8)
    assert per_blob.min() >= 1 and per_blob.max() <= 3 and per_blob.sum() == 16
    assert len(set(picks.indices.tolist())) == 16


def test_a_duplicated_image_is_never_picked_twice():
    """Blob 0 made of 30 copies of one image, blob 1 of 5 copies and 25 others: however many picks, each image's
    features occur once among them; and a twin of an excluded (labeled) image is never picked."""
    features, blob = blobs(count=3)
    features[blob == 0] = features[0]
    features[np.flatnonzero(blob == 1)[:5]] = features[np.flatnonzero(blob == 1)[0]]
    picks = typical_picks(features, 12, seed=0)
    picked = features[picks.indices]
    assert len(np.unique(np.round(picked, 6), axis=0)) == len(picks.indices)
    assert (blob[picks.indices] == 0).sum() == 1
    excluded = np.zeros(len(features), dtype=bool)
    excluded[np.flatnonzero(blob == 1)[0]] = True
    again = typical_picks(features, 12, seed=0, excluded=excluded)
    twins = np.flatnonzero(blob == 1)[:5]
    assert not set(again.indices.tolist()) & set(twins.tolist())


def test_excluded_rows_are_never_picked_and_count_as_labels_of_their_cluster():
    """Rows of blob 0 already labeled: never picked; 7 picks go to the 7 blobs without a label."""
    features, blob = blobs()
    excluded = np.zeros(len(features), dtype=bool)
    excluded[np.flatnonzero(blob == 0)[:3]] = True
    picks = typical_picks(features, 7, seed=0, excluded=excluded)
    assert not excluded[picks.indices].any()
    assert sorted(blob[picks.indices].tolist()) == list(range(1, 8))
    everything_else = typical_picks(features, int((~excluded).sum()), seed=0, excluded=excluded)
    assert sorted(everything_else.indices.tolist()) == np.flatnonzero(~excluded).tolist()


def test_the_same_seed_gives_the_same_picks():
    features, _ = blobs(count=12, per_blob=20, spread=0.4, seed=3)  # overlapping blobs: the clustering matters
    first, second = typical_picks(features, 10, seed=5), typical_picks(features, 10, seed=5)
    assert first.indices.tolist() == second.indices.tolist() and first.cluster.tolist() == second.cluster.tolist()
    assert np.array_equal(first.score, second.score)


def test_after_a_trained_run_the_hesitant_typical_image_of_each_cluster_is_picked():
    """In each blob one typical point has equal top-two probabilities (margin 0) and one outlier too: the typical
    one is picked, never the outlier; elsewhere the classifier is sure (margin 0.9)."""
    features, blob = blobs(count=4, per_blob=20)
    probabilities = np.tile([0.95, 0.05, 0.0], (len(features), 1))
    hesitant, outliers = [], []
    for b in range(4):
        members = np.flatnonzero(blob == b)
        centre = features[members].mean(axis=0)
        typical_row = members[np.argmin(np.linalg.norm(features[members] - centre, axis=1))]
        outlier_row = members[-1] if members[-1] != typical_row else members[-2]
        features[outlier_row] = centre + 0.6 * np.random.default_rng(b).normal(size=features.shape[1]) / 4
        probabilities[[typical_row, outlier_row]] = [0.45, 0.45, 0.1]
        hesitant.append(typical_row)
        outliers.append(outlier_row)
    picks = uncertain_picks(features, probabilities, 4, seed=0)
    assert sorted(picks.indices.tolist()) == sorted(hesitant)
    assert np.allclose(picks.score, 0.0)
    assert margins(np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])).tolist() == pytest.approx([0.5, 0.0])


def test_cover_stops_when_nothing_is_left():
    """Asking for more rows than are available gives every available row once, each once."""
    clusters = np.array([0, 0, 1, 1, 2])
    chosen = cover(clusters, np.arange(5.0), np.array([True, True, False, True, True]), np.zeros(5, dtype=bool),
                   np.arange(5), 10)
    assert sorted(chosen.tolist()) == [0, 1, 3, 4]


def two_regions(seed: int = 0):
    """Six large blobs around one direction (region 0) and two small ones around an orthogonal one (region 1):
    features and each row's region and blob."""
    rng = np.random.default_rng(seed)
    dims = 16
    region_centre = np.eye(dims)[:2]
    centres, regions, sizes = [], [], []
    for region, (count, size) in enumerate([(6, 40), (2, 20)]):
        for _ in range(count):
            offset = rng.normal(size=dims)
            centres.append(region_centre[region] + 0.25 * offset / np.linalg.norm(offset))
            regions.append(region)
            sizes.append(size)
    blob = np.repeat(np.arange(len(sizes)), sizes)
    features = np.asarray(centres)[blob] + 0.01 * rng.normal(size=(len(blob), dims))
    return features, np.asarray(regions)[blob], blob


def test_the_order_to_label_spreads_over_the_pool_rather_than_the_largest_clusters_first():
    """With one pick per blob, the largest blob comes first and the next pick goes to the far region, although its
    blobs are the smallest (largest-first would give it picks 7 and 8); a user labeling only the first rows covers
    both regions. The set of picks is the same: one per blob."""
    features, region, blob = two_regions()
    picks = typical_picks(features, 8, seed=0)
    assert sorted(blob[picks.indices].tolist()) == list(range(8))
    assert region[picks.indices[:2]].tolist() == [0, 1]
    assert set(region[picks.indices[:4]].tolist()) == {0, 1}


def test_the_next_round_starts_far_from_the_labels_already_given():
    """Labels already in region 0: the first new pick goes to region 1."""
    features, region, blob = two_regions()
    excluded = np.zeros(len(features), dtype=bool)
    excluded[[np.flatnonzero(blob == b)[0] for b in range(3)]] = True
    picks = typical_picks(features, 5, seed=0, excluded=excluded)
    assert region[picks.indices[0]] == 1
    assert sorted(blob[picks.indices].tolist()) == [3, 4, 5, 6, 7]


def test_cover_without_centres_keeps_the_largest_first():
    """No centres: the clusters are taken largest first, as TypiClust does."""
    clusters = np.array([0, 1, 1, 1, 2, 2])
    chosen = cover(clusters, np.zeros(6), np.ones(6, dtype=bool), np.zeros(6, dtype=bool), np.arange(6), 3)
    assert clusters[chosen].tolist() == [1, 2, 0]
