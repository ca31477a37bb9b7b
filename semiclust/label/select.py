"""Which images to label next: pure functions of the images' features (and, after a trained run, of its class
probabilities), numpy in and out.

Both rules cover the pool first, in the way of TypiClust (Hacohen, Dekel, Weinshall, ICML 2022): the features are
cut into as many k-means clusters as there will be labels (the new ones plus those already given), and each pick
goes to the cluster that holds the fewest labels so far, so that the labels spread over what the pool holds instead
of piling up where it is dense. Among those clusters the next pick goes to the one whose centre lies farthest from
the clusters labeled so far in this round (the largest first when nothing is labeled yet): the order to label then
spreads over the pool too, so that a user who labels only the first rows of the list still covers it, instead of
labeling the largest (often alike) clusters first. Inside the chosen cluster:

- `typical_picks` (the first round, from a self-supervised run) takes the most typical image: the highest
  density among its own cluster, 1 / the mean distance to its nearest neighbours there. A typical image is the
  one a label says the most about, and an outlier the least; with few labels this beats random picks by
  several points (TypiClust's figures, and docs/labeling.md's).
- `uncertain_picks` (the next rounds, from a Suave / Daino run) takes, among the cluster's more typical half,
  the image whose two most probable classes are closest (the smallest margin): where the classifier hesitates,
  not where it is already sure, and not on outliers.

An image is never picked twice, nor is any image identical (same features) to one picked or already labeled:
duplicates cost a label and teach nothing new.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOURS = 20  # TypiClust's k for the density
MIN_CLUSTER = 5  # clusters smaller than this are left for last (outliers; TypiClust's floor)
MINIBATCH_ABOVE = 200_000  # more features than this are clustered with MiniBatchKMeans


@dataclass
class Picks:
    """The chosen rows in the order to label them, the cluster of each, and its score under the rule (typicality,
    or the margin between the top two classes); `clusters` is every row's cluster."""

    indices: np.ndarray
    cluster: np.ndarray
    score: np.ndarray
    clusters: np.ndarray


def normalized(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): distances then follow the angle between features, as SwAV's and
    DINO's own cosine scores do."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def duplicate_groups(features: np.ndarray) -> np.ndarray:
    """A group id per row; rows with identical features (to 5 decimals: the same image decoded twice) share one."""
    _, groups = np.unique(np.round(features, 5), axis=0, return_inverse=True)
    return groups.reshape(-1)


def kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The cluster of every row: k-means (k-means++ starts, three tries) with the seed; at most as many clusters
    as distinct rows."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = max(1, min(k, int(duplicate_groups(features).max()) + 1))
    if k == 1:
        return np.zeros(len(features), dtype=np.int64)
    if len(features) > MINIBATCH_ABOVE:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=3)
    return model.fit_predict(features).astype(np.int64)


def typicality(features: np.ndarray, neighbours: int = NEIGHBOURS, chunk: int = 1024) -> np.ndarray:
    """1 / (mean Euclidean distance to the `neighbours` nearest other rows): TypiClust's density, high where the
    images are alike. A lone row has typicality 0."""
    count = len(features)
    k = min(neighbours, count - 1)
    if k < 1:
        return np.zeros(count, dtype=np.float64)
    out = np.empty(count, dtype=np.float64)
    squared = (features.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, count, chunk):
        rows = features[start:start + chunk].astype(np.float64)
        distance = np.sqrt(np.maximum(squared[start:start + chunk, None] + squared[None, :] - 2 * rows @ features.T, 0))
        distance[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf  # not its own neighbour
        nearest = np.partition(distance, k - 1, axis=1)[:, :k]
        out[start:start + len(rows)] = 1.0 / (nearest.mean(axis=1) + 1e-8)
    return out


def typicality_by_cluster(features: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Each row's typicality among the rows of its own cluster (TypiClust: k = min(20, half the cluster))."""
    out = np.zeros(len(features), dtype=np.float64)
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        out[members] = typicality(features[members], min(NEIGHBOURS, max(1, len(members) // 2)))
    return out


def margins(probabilities: np.ndarray) -> np.ndarray:
    """The top class's probability minus the second's, per row: 0 where the classifier cannot tell them apart."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    top = np.partition(probabilities, -2, axis=1)
    return top[:, -1] - top[:, -2]


def cluster_centres(features: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """The mean feature of every cluster id (a row of zeros for an id no row has)."""
    sums = np.zeros((int(clusters.max()) + 1, features.shape[1]), dtype=np.float64)
    np.add.at(sums, clusters, features)
    return sums / np.maximum(np.bincount(clusters, minlength=len(sums)), 1)[:, None]


def cover(clusters: np.ndarray, preference: np.ndarray, available: np.ndarray, labeled: np.ndarray,
          groups: np.ndarray, n: int, centres: np.ndarray | None = None) -> np.ndarray:
    """n rows in the order to label: each from a cluster with the fewest labels so far (clusters of at least
    MIN_CLUSTER rows before smaller ones; among them the one whose centre is farthest from the clusters labeled in
    this round, then the larger, then the lower id), the available row of highest `preference` there; a pick makes
    its duplicates (same group) unavailable. `labeled` marks rows with a label; `centres` (one row per cluster id,
    None: no distances) spreads the order."""
    available = available.copy()
    available[np.isin(groups, groups[labeled])] = False  # a twin of a labeled image teaches nothing new
    sizes = np.bincount(clusters, minlength=int(clusters.max()) + 1)
    counts = np.bincount(clusters[labeled], minlength=len(sizes)).astype(np.int64)
    spread = RoundSpread(centres, len(sizes))
    order = np.lexsort((np.arange(len(preference)), -preference))  # best first; ties by row
    order = order[np.argsort(clusters[order], kind="stable")]  # grouped by cluster, best first in each
    ids, starts = np.unique(clusters[order], return_index=True)
    queues = {int(c): list(reversed(order[a:b].tolist())) for c, a, b in zip(ids, starts, [*starts[1:], len(order)])}
    chosen: list[int] = []
    while len(chosen) < n:
        for rows in queues.values():  # each queue holds its best row last
            while rows and not available[rows[-1]]:
                rows.pop()
        open_clusters = [c for c, rows in queues.items() if rows]
        if not open_clusters:
            break
        distance = spread.distances(counts, min(counts[c] for c in open_clusters))
        best = min(open_clusters, key=lambda c: (counts[c], sizes[c] < MIN_CLUSTER, -distance[c], -sizes[c], c))
        row = queues[best].pop()
        chosen.append(row)
        counts[best] += 1
        spread.labeled(best)
        available[groups == groups[row]] = False
    return np.asarray(chosen, dtype=np.int64)


class RoundSpread:
    """For `cover`: each cluster's distance to the nearest centre of the clusters labeled in the current round
    (a round: every open cluster reaching the same count of labels); infinite for all at a round's start."""

    def __init__(self, centres: np.ndarray | None, clusters: int):
        self.centres, self.level = centres, -1
        self.nearest = np.full(clusters, np.inf) if centres is not None else np.zeros(clusters)

    def distances(self, counts: np.ndarray, level: int) -> np.ndarray:
        """The distances for a pick at `level` labels, given every cluster's `counts` so far."""
        if self.centres is not None and level != self.level:  # a new round: from the clusters already above it
            self.level = level
            self.nearest = np.full(len(counts), np.inf)
            for cluster in np.flatnonzero(counts > level):
                self.labeled(int(cluster))
        return self.nearest

    def labeled(self, cluster: int) -> None:
        if self.centres is not None:
            gap = np.linalg.norm(self.centres - self.centres[cluster], axis=1)
            self.nearest = np.minimum(self.nearest, gap)


def _clusters_for(features: np.ndarray, n: int, labeled: np.ndarray, seed: int) -> np.ndarray:
    """TypiClust's clustering: as many clusters as labels there will be (new + already given)."""
    return kmeans(features, n + int(labeled.sum()), seed)


def typical_picks(features: np.ndarray, n: int, seed: int, excluded: np.ndarray | None = None) -> Picks:
    """The first round: the most typical image of each of the least-labeled clusters (module docstring).
    `excluded` marks rows already labeled (never picked; they count in their cluster's labels)."""
    features = normalized(features)
    labeled = np.zeros(len(features), dtype=bool) if excluded is None else np.asarray(excluded, dtype=bool)
    clusters = _clusters_for(features, n, labeled, seed)
    typical = typicality_by_cluster(features, clusters)
    chosen = cover(clusters, typical, ~labeled, labeled, duplicate_groups(features), n,
                   cluster_centres(features, clusters))
    return Picks(chosen, clusters[chosen], typical[chosen], clusters)


def uncertain_picks(features: np.ndarray, probabilities: np.ndarray, n: int, seed: int,
                    excluded: np.ndarray | None = None) -> Picks:
    """The next rounds: in each of the least-labeled clusters, the image of smallest margin between its two most
    probable classes among the cluster's more typical half (module docstring)."""
    features = normalized(features)
    labeled = np.zeros(len(features), dtype=bool) if excluded is None else np.asarray(excluded, dtype=bool)
    clusters = _clusters_for(features, n, labeled, seed)
    typical = typicality_by_cluster(features, clusters)
    margin = margins(probabilities)
    typical_half = np.zeros(len(features), dtype=bool)
    for cluster in np.unique(clusters):
        members = np.flatnonzero((clusters == cluster) & ~labeled)
        if len(members):
            typical_half[members] = typical[members] >= np.median(typical[members])
    preference = (1.0 - margin) + typical_half  # the typical half first, then the smallest margin
    chosen = cover(clusters, preference, ~labeled, labeled, duplicate_groups(features), n,
                   cluster_centres(features, clusters))
    return Picks(chosen, clusters[chosen], margin[chosen], clusters)
