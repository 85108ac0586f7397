"""PCA/UMAP of token features per layer, with numbers: do persons separate from the rest?

Patch tokens are labelled person/background (patch centre inside a person box); det tokens
matched/unmatched (matched to a ground-truth person by the final layer's boxes, Hungarian on IoU
>= 0.5). Per layer and token kind: PCA explained variance of the first two components, silhouette
score of the labels, and the balanced k-NN accuracy of the labels on held-out images (neighbours
from the training images only). 2-D PCA and UMAP embeddings of the sampled points are saved for the
report's scatter plots. Points are subsampled with the seed; the result says how many were used.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Annotated

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import balanced_accuracy_score, silhouette_score
from sklearn.neighbors import KNeighborsClassifier

from probe_kit.analyzers._registry import AnalyzerResult, register
from probe_kit.cache.reader import FeatureCache
from probe_kit.ops.matching import match_final_to_gt, patches_inside
from probe_kit.options import Fraction, PositiveInt, Range
from probe_kit.training.data import make_split, options_json


@dataclass(frozen=True)
class ClusteringOptions:
    max_points: PositiveInt = 1500  # per token kind and layer, sampled with the seed
    neighbours: PositiveInt = 5
    pca_dims: PositiveInt = 32  # k-NN and silhouette run in this PCA space
    umap: bool = True
    tsne: bool = False  # a t-SNE picture too (the status report's Experiment 2); it places points, nothing is scored
    perplexity: Annotated[float, Range(1, 100)] = 30.0  # t-SNE's perplexity (below the number of points)
    val_fraction: Fraction = 0.3
    val_sequences: tuple[str, ...] = ()


def _labels(cache: FeatureCache, samples) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per kind: (image index, token index, label) of every candidate point, as compact arrays (9 bytes a point:
    a real study's 10 million patch tokens take 86 MB, not the gigabytes of Python lists)."""
    _, final_boxes = cache.final_outputs()
    grid = (cache.layout.grid_h, cache.layout.grid_w)
    det, patch = [], []
    for i, sample in enumerate(samples):
        matched = {t for t, _ in match_final_to_gt(final_boxes[i], sample)}
        det.append(np.isin(np.arange(cache.layout.num_det), list(matched)))
        if "patch" in cache.tokens:
            person = np.zeros(grid[0] * grid[1], dtype=bool)
            for box in sample.boxes:
                person |= patches_inside(box, grid, sample.width, sample.height)
            patch.append(person)
    return {kind: _points(labels) for kind, labels in (("det", det), ("patch", patch)) if labels}


def _points(labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image index, token index, label) of every token of every image, from each image's boolean labels."""
    per_image = len(labels[0])
    images = np.repeat(np.arange(len(labels), dtype=np.int32), per_image)
    tokens = np.tile(np.arange(per_image, dtype=np.int32), len(labels))
    return images, tokens, np.concatenate(labels).astype(np.int8)


def _sample(rng: np.random.Generator, images: np.ndarray, allowed: np.ndarray, limit: int) -> np.ndarray:
    candidates = np.flatnonzero(np.isin(images, allowed))
    return np.sort(rng.choice(candidates, size=min(limit, len(candidates)), replace=False))


def _features(cache: FeatureCache, layer: int, kind: str, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The sampled ``(image, token)`` points' features, read a budget of images at a time
    (``FeatureCache.rows_per_read``): only the chosen tokens are kept, so memory is the points plus one read."""
    unique, inverse = np.unique(images, return_inverse=True)
    out = np.empty((len(images), cache.row_shape(layer, kind)[-1]), dtype=np.float32)
    step = cache.rows_per_read(layer, kind)
    for start in range(0, len(unique), step):
        block = cache.read(layer, kind, unique[start : start + step])
        here = (inverse >= start) & (inverse < start + step)
        out[here] = block[inverse[here] - start, tokens[here]]
    return out


def _tsne(points: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    """2-D t-SNE of ``points`` (scikit-learn, PCA initialisation, seeded); perplexity capped below the point count."""
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(1.0, (len(points) - 1) / 3))
    reducer = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return reducer.fit_transform(points).astype(np.float32)


def _umap(points: np.ndarray, seed: int) -> np.ndarray:
    import umap

    with warnings.catch_warnings():  # umap warns that a seed forces one thread; we want the seed
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=15, n_jobs=1)
        return reducer.fit_transform(points).astype(np.float32)


@register(
    "clustering",
    "PCA/UMAP/t-SNE per layer: explained variance, silhouette, held-out k-NN accuracy of person labels",
    ClusteringOptions,
    role="evidence",
    metrics={
        "patch_knn_balanced_accuracy": "patch person/background k-NN balanced accuracy",
        "det_knn_balanced_accuracy": "det matched/unmatched k-NN balanced accuracy",
    },
)
def run_clustering(cache: FeatureCache, layers: tuple[int, ...], seed: int = 0, **options) -> AnalyzerResult:
    opts = ClusteringOptions(**{k: tuple(v) if k == "val_sequences" else v for k, v in options.items()})
    samples = cache.samples()
    split = make_split(samples, opts.val_fraction, val_sequences=opts.val_sequences)
    train_images = np.concatenate([split.train, split.holdout])
    labels = _labels(cache, samples)
    per_layer: dict[int, dict] = {k: {} for k in layers}
    arrays: dict[str, np.ndarray] = {}
    for kind, (images, tokens, y) in labels.items():
        rng = np.random.default_rng([seed, len(kind)])
        train = _sample(rng, images, train_images, opts.max_points)
        test = _sample(rng, images, split.val, opts.max_points // 2)
        if len(np.unique(y[train])) < 2 or len(np.unique(y[test])) < 2:
            continue  # a kind with one label only has nothing to separate
        arrays[f"{kind}_labels"] = y[train]
        for layer in layers:
            x_train = _features(cache, layer, kind, images[train], tokens[train])
            x_test = _features(cache, layer, kind, images[test], tokens[test])
            pca = PCA(n_components=min(opts.pca_dims, *x_train.shape), random_state=seed).fit(x_train)
            z_train, z_test = pca.transform(x_train), pca.transform(x_test)
            knn = KNeighborsClassifier(opts.neighbours).fit(z_train, y[train])
            per_layer[layer].update(
                {
                    f"{kind}_pca2_explained": float(pca.explained_variance_ratio_[:2].sum()),
                    f"{kind}_silhouette": float(silhouette_score(z_train, y[train], random_state=seed)),
                    f"{kind}_knn_balanced_accuracy": float(balanced_accuracy_score(y[test], knn.predict(z_test))),
                    f"{kind}_points": int(len(train) + len(test)),
                }
            )
            arrays[f"{kind}_pca_L{layer}"] = z_train[:, :2].astype(np.float32)
            if opts.umap:
                arrays[f"{kind}_umap_L{layer}"] = _umap(z_train, seed)
            if opts.tsne:
                arrays[f"{kind}_tsne_L{layer}"] = _tsne(z_train, seed, opts.perplexity)
    if not arrays:
        raise ValueError(f"{cache.path}: no token kind has both labels among the sampled points")
    return AnalyzerResult(
        "clustering",
        options_json(asdict(opts)),
        seed,
        per_layer,
        cache.fingerprint,
        arrays=arrays,
        extra={"split": split.describe(samples)},
    )
