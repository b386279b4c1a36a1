"""Grouping face embeddings into identities, and cleaning an identity folder of the faces that are not its person.

After Hybrid Generative Fusion, arXiv 2508.10672, (Method Summary and "Mixture-of-Experts (MoE) for Data
Validation": face embeddings of each identity folder clustered with DBSCAN, and images outside the folder's main
cluster treated as label noise). The paper gives no eps; here each folder gets its own: the smallest eps on a grid
at which the main cluster holds ``main_fraction`` of the folder, never above ``max_eps`` so that a second person
never joins the main cluster (:func:`clean_identity_folder`).

Distances are cosine distances, ``1 - cos``, of the embeddings. Defaults are set for dlib's descriptors
(:class:`sameid.backends.face_dlib.DlibFaceEmbedder`, L2-normalised). dlib's raw descriptors have norms of about
1.37-1.47, so its verification rule "same person when the euclidean distance is below 0.6" is a cosine distance of
0.36 / (2 * 1.43**2) ~= 0.088 on unit vectors (0.083-0.095 over those norms), not the 0.18 that unit-norm raw
descriptors would give; dlib's own face-clustering example (``python_examples/face_clustering.py``, chinese
whispers) uses euclidean 0.5, cosine ~= 0.061. Measured on the photos of ``tests/test_faces.py``: nine
augmentations (flip, brightness, contrast, +-8 degree rotation, crop and rescale, JPEG quality 25, blur) of one
photo are within 0.03 of each other; Eileen Collins (skimage's astronaut) and Grace Hopper (matplotlib's sample)
are 0.097-0.13 apart. Hence:

- ``DEFAULT_EPS = 0.06`` for :func:`cluster_faces` (dlib's clustering threshold): DBSCAN chains neighbours, so its
  eps must stay well below the pairwise rule;
- ``CLEAN_MAX_EPS = 0.085`` for :func:`clean_identity_folder`, just below dlib's pairwise rule, and a grid from
  ``0.05`` (euclidean ~0.43 on raw descriptors, well inside dlib's same-person range, so a tight folder is not
  trimmed to its densest core) in steps of 0.005.

The margin between dlib's rule and two different people can be as thin as the 0.01 seen above: these defaults keep
identities apart at the cost of splitting a person photographed under very different conditions. Other embedders
need their own eps (ArcFace verification thresholds are typically cosine similarities of 0.3-0.4, distances 0.6-0.7).

:func:`dbscan_cosine` is exact DBSCAN (the labels of ``sklearn.cluster.DBSCAN(metric="cosine",
algorithm="brute")``, numbering included) computed from a sparse neighbour graph: float32 GEMM over row blocks of
the upper triangle (or a faiss ``IndexFlatIP`` range search), core points, connected components of the core graph
(scipy), then border points. Time is the n**2 * dim GEMM; memory is the pairs found, not sklearn's per-point
neighbourhood arrays. ``benchmarks/bench_face_clustering.py`` compares the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from ..errors import SameIdError

DEFAULT_EPS = 0.06
DEFAULT_MIN_SAMPLES = 2
CLEAN_MAX_EPS = 0.085
CLEAN_EPS_GRID = tuple(round(0.05 + 0.005 * i, 3) for i in range(8))  # 0.05, 0.055, ..., 0.085
CLEAN_MAIN_FRACTION = 0.6

# Inner products are computed in float32 (error ~1e-6 for unit vectors); pairs found within this much of the
# threshold are re-measured in float64, so the neighbour sets are those of an exact float64 computation.
_FLOAT32_MARGIN = 1e-4
# Similarity block size (float32 entries, 128 MiB): rows of the block = this // n.
_BLOCK_ENTRIES = 1 << 25
_FAISS_QUERY_CHUNK = 4096
ENGINES = ("blas", "faiss")


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """float64 copy with unit rows; an error naming the row for a non-finite or zero vector."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise SameIdError(f"embeddings must be a 2-d array (n, dim), got shape {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise SameIdError(f"embedding row {row} has a NaN or infinite value")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms == 0)[0])
        raise SameIdError(f"embedding row {row} is all zeros: its cosine distance is undefined")
    return x / norms[:, None]


def _check_eps(eps: float, min_samples: int) -> None:
    if not (np.isfinite(eps) and eps > 0):
        raise SameIdError(f"eps must be a finite cosine distance > 0, not {eps!r}")
    if int(min_samples) < 1:
        raise SameIdError(f"min_samples must be >= 1, not {min_samples!r}")


def _pairs_blas(base: np.ndarray, threshold: float):
    """(i, j, sim) with i < j and sim > threshold: float32 GEMM over the upper triangle, one row block at a time."""
    n = base.shape[0]
    block = max(1, _BLOCK_ENTRIES // n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        width = n - start
        sims = base[start:stop] @ base[start:].T  # the columns before ``start`` were paired in earlier blocks
        flat = np.flatnonzero(sims.ravel() > threshold)
        i = start + flat // width
        j = start + flat % width
        upper = j > i
        yield i[upper], j[upper], sims.ravel()[flat[upper]]


def _pairs_faiss(base: np.ndarray, threshold: float):
    """Same pairs as :func:`_pairs_blas`, from a faiss ``IndexFlatIP`` range search (whole rows, so ~2x the work)."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    for start in range(0, base.shape[0], _FAISS_QUERY_CHUNK):
        stop = min(base.shape[0], start + _FAISS_QUERY_CHUNK)
        lims, sims, ids = index.range_search(base[start:stop], threshold)
        i = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(lims).astype(np.int64))
        j = ids.astype(np.int64)
        upper = j > i
        yield i[upper], j[upper], sims[upper]


def cosine_neighbour_graph(unit: np.ndarray, eps: float, engine: str = "blas") -> sparse.csr_matrix:
    """Sparse symmetric (n, n) matrix of the pairs within cosine distance ``eps``, self included; values are the
    distances (0 on the diagonal, stored explicitly).

    Rows of ``unit`` must be unit vectors. ``engine="blas"`` (default) multiplies row blocks by the rows after
    them with numpy's float32 GEMM and keeps the entries above the threshold; ``"faiss"`` uses a faiss
    ``IndexFlatIP`` range search instead. Both give the same graph; on the 2-core (shared) development machine
    the GEMM was 4-6x faster (n=100k, dim 128: 37 s against 238 s; faiss scans whole rows, twice the pairs, and
    its OpenMP range search suffers more from other processes on the cores). Memory is that of the pairs found
    plus one 128 MiB block: a too large eps, where everyone neighbours everyone, costs n**2.
    """
    if engine not in ENGINES:
        raise SameIdError(f"unknown neighbour search engine {engine!r}: choose one of {', '.join(ENGINES)}")
    n, _ = unit.shape
    if n == 0:
        return sparse.csr_matrix((0, 0), dtype=np.float64)
    base = np.ascontiguousarray(unit, dtype=np.float32)
    threshold = float(1.0 - eps - _FLOAT32_MARGIN)
    pairs = _pairs_blas(base, threshold) if engine == "blas" else _pairs_faiss(base, threshold)
    rows, cols, dists = [], [], []
    for i, j, sims in pairs:
        dist = 1.0 - sims.astype(np.float64)
        near = np.abs(dist - eps) <= 2 * _FLOAT32_MARGIN
        if near.any():
            dist[near] = 1.0 - np.einsum("ij,ij->i", unit[i[near]], unit[j[near]])
        keep = dist <= eps
        rows.append(i[keep])
        cols.append(j[keep])
        dists.append(np.clip(dist[keep], 0.0, 2.0))
    i, j, dist = (np.concatenate(parts) if parts else np.empty(0) for parts in (rows, cols, dists))
    diagonal = np.arange(n, dtype=np.int64)
    graph = sparse.csr_matrix(
        (
            np.concatenate([dist, dist, np.zeros(n)]),
            (np.concatenate([i, j, diagonal]).astype(np.int64), np.concatenate([j, i, diagonal]).astype(np.int64)),
        ),
        shape=(n, n),
    )
    return graph


def _dbscan_from_graph(graph: sparse.csr_matrix, min_samples: int) -> np.ndarray:
    """DBSCAN labels from a neighbour graph that holds exactly the pairs within eps (self included).

    Clusters are numbered in the order of their smallest core point, and a border point (not core, with a core
    neighbour) joins the lowest-numbered cluster among its core neighbours. This is the order in which sklearn's
    ``dbscan_inner`` grows clusters, so the labels equal sklearn's exactly, ties included.
    """
    n = graph.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    graph = graph.tocsr()
    is_core = np.diff(graph.indptr) >= min_samples
    core = np.flatnonzero(is_core)
    if core.size == 0:
        return labels
    # Only the structure counts: a pair of identical faces is an edge of weight (distance) 0.
    structure = sparse.csr_matrix((np.ones(graph.nnz, dtype=np.int8), graph.indices, graph.indptr), shape=graph.shape)
    core_graph = structure[core][:, core]
    _, component = csgraph.connected_components(core_graph, directed=False)
    # Renumber components by their smallest core index (core is sorted, so the first occurrence is the smallest).
    _, first = np.unique(component, return_index=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    core_label = rank[component]
    labels[core] = core_label

    coo = graph.tocoo()
    border_edge = ~is_core[coo.row] & is_core[coo.col]
    if border_edge.any():
        row = coo.row[border_edge]
        label_of_core = np.full(n, -1, dtype=np.int64)
        label_of_core[core] = core_label
        edge_label = label_of_core[coo.col[border_edge]]
        order = np.lexsort((edge_label, row))
        row, edge_label = row[order], edge_label[order]
        first_of_row = np.ones(row.size, dtype=bool)
        first_of_row[1:] = row[1:] != row[:-1]
        labels[row[first_of_row]] = edge_label[first_of_row]
    return labels


def dbscan_cosine(
    embeddings: np.ndarray, eps: float, min_samples: int = DEFAULT_MIN_SAMPLES, engine: str = "blas"
) -> np.ndarray:
    """Exact DBSCAN on cosine distance: int labels per row, ``-1`` for noise.

    Same labels as ``sklearn.cluster.DBSCAN(eps, min_samples=min_samples, metric="cosine", algorithm="brute")``,
    cluster numbers included, for float64 input (a point is core when at least ``min_samples`` points, itself
    included, are within ``eps``). Distances are found in float32 and those within 1e-4 of ``eps`` are
    recomputed in float64; sklearn keeps float32 input in float32, so on float32 input a pair within ~1e-7 of
    ``eps`` may be decided differently. A zero or non-finite row is an error naming the row. ``engine`` is the
    neighbour search of :func:`cosine_neighbour_graph`.
    """
    _check_eps(eps, min_samples)
    unit = _unit_rows(embeddings)
    if unit.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    return _dbscan_from_graph(cosine_neighbour_graph(unit, eps, engine), int(min_samples))


def cluster_faces(
    embeddings: np.ndarray,
    method: str = "dbscan",
    eps: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    min_cluster_size: int = 2,
) -> np.ndarray:
    """Identity labels for face embeddings (``-1`` = a face not grouped with any other).

    ``"dbscan"``: :func:`dbscan_cosine` with ``eps`` (default ``DEFAULT_EPS``, set for dlib). ``"hdbscan"``:
    ``sklearn.cluster.HDBSCAN`` on the L2-normalised embeddings with euclidean distance (a monotone function of
    cosine distance: ``sqrt(2 * d_cos)``), ``min_cluster_size`` and ``min_samples``; ``eps``, when given, is its
    ``cluster_selection_epsilon`` as a cosine distance (clusters closer than that are not split). HDBSCAN needs no
    eps but may split one person into several clusters when the photos form sub-groups.
    """
    if method == "dbscan":
        return dbscan_cosine(embeddings, DEFAULT_EPS if eps is None else eps, min_samples)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        unit = _unit_rows(embeddings)
        n = unit.shape[0]
        if n < max(2, min_cluster_size):
            return np.full(n, -1, dtype=np.int64)
        selection_eps = 0.0
        if eps is not None:
            _check_eps(eps, min_samples)
            selection_eps = float(np.sqrt(2.0 * eps))
        model = HDBSCAN(
            min_cluster_size=int(min_cluster_size),
            min_samples=int(min_samples),
            cluster_selection_epsilon=selection_eps,
            metric="euclidean",
            copy=True,
        )
        return model.fit_predict(unit).astype(np.int64)
    raise SameIdError(f"unknown clustering method {method!r}: choose 'dbscan' or 'hdbscan'")


@dataclass(frozen=True)
class FolderCleaning:
    """The outcome of cleaning one identity folder.

    ``keep`` marks the faces of the main cluster (``~keep`` are the outliers); ``eps`` is the eps that was used;
    ``reached_fraction`` is False when even ``max_eps`` left the main cluster below ``main_fraction`` of the folder
    (the folder is then doubtful: a mixed folder or very varied photos); ``labels`` are the DBSCAN labels at ``eps``.
    """

    keep: np.ndarray
    eps: float
    main_cluster_size: int
    reached_fraction: bool
    labels: np.ndarray

    @property
    def outliers(self) -> np.ndarray:
        return np.flatnonzero(~self.keep)


def _largest_cluster(labels: np.ndarray) -> tuple[int, int]:
    """(label, size) of the largest cluster, the lowest label on a tie; (-1, 0) when all is noise."""
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return -1, 0
    sizes = np.bincount(clustered)
    label = int(np.argmax(sizes))
    return label, int(sizes[label])


def clean_identity_folder(
    embeddings: np.ndarray,
    main_fraction: float = CLEAN_MAIN_FRACTION,
    eps_grid: tuple[float, ...] | list[float] | np.ndarray = CLEAN_EPS_GRID,
    max_eps: float = CLEAN_MAX_EPS,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> FolderCleaning:
    """Keep the faces of a folder's main identity cluster, with an eps chosen for this folder (paper 002).

    The grid (values above ``max_eps`` dropped, ``max_eps`` added as its last step) is tried from the smallest
    eps; the first at which the largest DBSCAN cluster holds ``>= main_fraction`` of the folder is used, and the
    faces outside that cluster are outliers. The grid's smallest value is a floor: a tight folder is not trimmed to
    its densest core. If no eps up to ``max_eps`` reaches the fraction, the largest cluster at ``max_eps`` is kept
    and ``reached_fraction`` is False. A single face is kept; a folder where no two faces are within ``max_eps``
    keeps nothing.
    """
    if not 0.0 < main_fraction <= 1.0:
        raise SameIdError(f"main_fraction must be in (0, 1], not {main_fraction!r}")
    _check_eps(max_eps, min_samples)
    grid = sorted({float(e) for e in np.asarray(eps_grid, dtype=np.float64).ravel() if e < max_eps} | {max_eps})
    for e in grid:
        _check_eps(e, min_samples)
    unit = _unit_rows(embeddings)
    n = unit.shape[0]
    if n <= 1:
        return FolderCleaning(
            keep=np.ones(n, dtype=bool), eps=grid[0], main_cluster_size=n, reached_fraction=True,
            labels=np.zeros(n, dtype=np.int64),
        )
    # One neighbour search at the largest eps; each smaller eps only filters its pairs.
    widest = cosine_neighbour_graph(unit, max_eps).tocoo()
    for i, e in enumerate(grid):
        within = widest.data <= e
        graph = sparse.csr_matrix((widest.data[within], (widest.row[within], widest.col[within])), shape=(n, n))
        labels = _dbscan_from_graph(graph, int(min_samples))
        main_label, size = _largest_cluster(labels)
        reached = size >= main_fraction * n
        if reached or i == len(grid) - 1:
            keep = labels == main_label if main_label >= 0 else np.zeros(n, dtype=bool)
            return FolderCleaning(keep=keep, eps=e, main_cluster_size=size, reached_fraction=bool(reached), labels=labels)
    raise AssertionError("unreachable: the grid is never empty")
