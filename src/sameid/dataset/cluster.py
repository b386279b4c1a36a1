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
    i, j, dist = _exact_pairs(unit, pairs, eps)
    return _symmetric_graph(n, i, j, dist)


def _exact_pairs(unit: np.ndarray, pairs, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) of the float32 candidate ``pairs`` that are within ``eps``, deciding those within
    ``2 * _FLOAT32_MARGIN`` of ``eps`` on float64 inner products of ``unit``."""
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
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64), np.concatenate(dists)


def _symmetric_graph(n: int, i: np.ndarray, j: np.ndarray, dist: np.ndarray,
                     diagonal: np.ndarray | None = None) -> sparse.csr_matrix:
    """The (n, n) csr graph of the pairs (i, j) with i < j, both ways, plus the diagonal (every point, or the
    points of ``diagonal``) stored explicitly with distance 0."""
    diagonal = np.arange(n, dtype=np.int64) if diagonal is None else diagonal.astype(np.int64)
    return sparse.csr_matrix(
        (
            np.concatenate([dist, dist, np.zeros(diagonal.size)]),
            (np.concatenate([i, j, diagonal]), np.concatenate([j, i, diagonal])),
        ),
        shape=(n, n),
    )


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
    (the folder is then doubtful: a mixed folder or very varied photos); ``labels`` are the DBSCAN labels at ``eps``;
    ``nearest_main`` is each outlier's cosine distance to the nearest face of the main cluster (``inf`` when none
    lies within the search radius, ``max_eps`` plus the ``near_margin`` asked for; NaN for the main cluster's faces).
    """

    keep: np.ndarray
    eps: float
    main_cluster_size: int
    reached_fraction: bool
    labels: np.ndarray
    nearest_main: np.ndarray | None = None

    @property
    def outliers(self) -> np.ndarray:
        return np.flatnonzero(~self.keep)


@dataclass(frozen=True)
class FolderCleanings:
    """The outcome of cleaning many identity folders at once (:func:`clean_identity_folders`).

    Per face (input order): ``keep``, ``labels`` (DBSCAN labels numbered within the face's folder, as
    :func:`dbscan_cosine` would number them on that folder alone) and ``nearest_main``. Per folder (index = folder
    code): ``sizes``, ``eps``, ``main_cluster_size``, ``reached_fraction``. ``folders`` is the folder code of
    each face.
    """

    folders: np.ndarray
    keep: np.ndarray
    labels: np.ndarray
    nearest_main: np.ndarray
    sizes: np.ndarray
    eps: np.ndarray
    main_cluster_size: np.ndarray
    reached_fraction: np.ndarray

    def folder(self, code: int) -> FolderCleaning:
        rows = np.flatnonzero(self.folders == code)
        return FolderCleaning(
            keep=self.keep[rows], eps=float(self.eps[code]), main_cluster_size=int(self.main_cluster_size[code]),
            reached_fraction=bool(self.reached_fraction[code]), labels=self.labels[rows],
            nearest_main=self.nearest_main[rows],
        )


def _largest_cluster(labels: np.ndarray) -> tuple[int, int]:
    """(label, size) of the largest cluster, the lowest label on a tie; (-1, 0) when all is noise."""
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return -1, 0
    sizes = np.bincount(clustered)
    label = int(np.argmax(sizes))
    return label, int(sizes[label])


#: Folders up to this many faces are compared in stacked (batched) matrix products; larger ones one at a time.
_BATCHED_FOLDER_MAX = 2048


def _folder_pairs(base: np.ndarray, starts: np.ndarray, sizes: np.ndarray, threshold: float):
    """(i, j, sim) with i < j in the same folder and sim > threshold, on rows sorted by folder (``starts``,
    ``sizes``): folders of one size are stacked and multiplied together, ``_BLOCK_ENTRIES`` similarities at a
    time; a folder above ``_BATCHED_FOLDER_MAX`` faces goes through :func:`_pairs_blas` alone."""
    for size in np.unique(sizes[sizes >= 2]):
        size = int(size)
        folders = np.flatnonzero(sizes == size)
        if size > _BATCHED_FOLDER_MAX:
            for f in folders:
                first = int(starts[f])
                for i, j, sims in _pairs_blas(base[first:first + size], threshold):
                    yield i + first, j + first, sims
            continue
        upper = np.triu(np.ones((size, size), dtype=bool), k=1)
        step = max(1, _BLOCK_ENTRIES // (size * size))
        offsets = np.arange(size, dtype=np.int64)
        for chunk in range(0, folders.size, step):
            rows = starts[folders[chunk:chunk + step]][:, None] + offsets  # (k, size) global row numbers
            stacked = base[rows]
            sims = np.matmul(stacked, stacked.transpose(0, 2, 1))
            hit = np.nonzero((sims > threshold) & upper)
            yield rows[hit[0], hit[1]], rows[hit[0], hit[2]], sims[hit]


def clean_identity_folders(
    embeddings: np.ndarray,
    folders: np.ndarray,
    main_fraction: float = CLEAN_MAIN_FRACTION,
    eps_grid: tuple[float, ...] | list[float] | np.ndarray = CLEAN_EPS_GRID,
    max_eps: float = CLEAN_MAX_EPS,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    near_margin: float = 0.0,
) -> FolderCleanings:
    """:func:`clean_identity_folder` for every folder at once: ``folders`` gives each row's folder code (ints
    ``0..F-1``, any order). Each folder gets exactly the result it would get alone.

    The same-folder pairs within ``max_eps + near_margin`` are found once, in batched float32 matrix products of
    the folders' faces (``_BLOCK_ENTRIES`` similarities at a time; the float64 re-check of
    :func:`cosine_neighbour_graph` near the radius); then each eps of the grid, from the smallest, runs DBSCAN
    on the block-diagonal graph of the folders not yet decided (one :func:`_dbscan_from_graph`: clusters never
    cross folders, and numbering by smallest core index orders each folder's clusters as on its own). A folder
    is decided at the first eps whose largest cluster holds ``main_fraction`` of it, or at ``max_eps``.
    ``near_margin`` only widens the search so that ``nearest_main`` sees outliers that nearly joined (the
    judge's doubt margin, :func:`doubtful_folders`).
    """
    if not 0.0 < main_fraction <= 1.0:
        raise SameIdError(f"main_fraction must be in (0, 1], not {main_fraction!r}")
    _check_eps(max_eps, min_samples)
    if not (np.isfinite(near_margin) and near_margin >= 0):
        raise SameIdError(f"near_margin must be a finite cosine distance >= 0, not {near_margin!r}")
    grid = sorted({float(e) for e in np.asarray(eps_grid, dtype=np.float64).ravel() if e < max_eps} | {max_eps})
    for e in grid:
        _check_eps(e, min_samples)
    unit = _unit_rows(embeddings)
    n = unit.shape[0]
    folders = np.asarray(folders)
    if folders.shape != (n,) or (n and (not np.issubdtype(folders.dtype, np.integer) or folders.min() < 0)):
        raise SameIdError(f"folders must give a folder code >= 0 for each of the {n} embeddings")
    folders = folders.astype(np.int64)
    n_folders = int(folders.max()) + 1 if n else 0
    order = np.argsort(folders, kind="stable")
    unit = unit[order]
    folder_of = folders[order]
    sizes = np.bincount(folder_of, minlength=n_folders).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    search = max_eps + near_margin
    base = np.ascontiguousarray(unit, dtype=np.float32)
    pairs = _folder_pairs(base, starts, sizes, float(1.0 - search - _FLOAT32_MARGIN))
    pi, pj, pdist = _exact_pairs(unit, pairs, search)
    pair_folder = folder_of[pi]

    keep = np.zeros(n, dtype=bool)
    labels = np.full(n, -1, dtype=np.int64)
    eps_used = np.full(n_folders, grid[0])
    main_size = np.minimum(sizes, 1)  # a folder of one face keeps it; an empty folder has no cluster
    reached = np.ones(n_folders, dtype=bool)
    single = sizes[folder_of] == 1
    keep[single] = True
    labels[single] = 0
    undecided = sizes >= 2
    # the pairs of the folders not yet decided, within the current eps (shrinks as folders are decided)
    live = pdist <= grid[-1]
    si, sj, sdist, sfolder = pi[live], pj[live], pdist[live], pair_folder[live]
    for step, e in enumerate(grid):
        if not undecided.any():
            break
        active_points = undecided[folder_of]
        within = sdist <= e
        graph = _symmetric_graph(n, si[within], sj[within], sdist[within], np.flatnonzero(active_points))
        found = _dbscan_from_graph(graph, int(min_samples))
        clustered = np.flatnonzero(found >= 0)
        cluster_size = np.bincount(found[clustered]) if clustered.size else np.empty(0, dtype=np.int64)
        cluster_folder = np.empty(cluster_size.size, dtype=np.int64)
        cluster_folder[found[clustered]] = folder_of[clustered]
        # largest cluster per folder, lowest label on a tie; a folder's clusters are numbered consecutively
        by = np.lexsort((np.arange(cluster_size.size), -cluster_size, cluster_folder))
        first = np.ones(by.size, dtype=bool)
        first[1:] = cluster_folder[by][1:] != cluster_folder[by][:-1]
        main_label = np.full(n_folders, -1, dtype=np.int64)
        main_label[cluster_folder[by[first]]] = by[first]
        lowest_label = np.full(n_folders, -1, dtype=np.int64)
        with_clusters, first_cluster = np.unique(cluster_folder, return_index=True)
        lowest_label[with_clusters] = first_cluster
        size_of_main = np.zeros(n_folders, dtype=np.int64)
        has_main = main_label >= 0
        size_of_main[has_main] = cluster_size[main_label[has_main]]
        ok = size_of_main >= main_fraction * sizes
        decide = undecided & (ok | (step == len(grid) - 1))
        points = decide[folder_of]
        point_label = found[points]
        point_folder = folder_of[points]
        labels[points] = np.where(point_label >= 0, point_label - lowest_label[point_folder], -1)
        keep[points] = (point_label == main_label[point_folder]) & (point_label >= 0)
        eps_used[decide] = e
        main_size[decide] = size_of_main[decide]
        reached[decide] = ok[decide]
        undecided &= ~decide
        still = undecided[sfolder]
        si, sj, sdist, sfolder = si[still], sj[still], sdist[still], sfolder[still]

    # distance of each outlier to the nearest face of its folder's main cluster (within the search radius)
    nearest = np.where(keep, np.nan, np.inf)
    across = keep[pi] != keep[pj]
    outlier = np.where(keep[pi[across]], pj[across], pi[across])
    np.minimum.at(nearest, outlier, pdist[across])
    back = np.empty(n, dtype=np.int64)
    back[order] = np.arange(n)
    return FolderCleanings(
        folders=folders, keep=keep[back], labels=labels[back], nearest_main=nearest[back], sizes=sizes,
        eps=eps_used, main_cluster_size=main_size, reached_fraction=reached,
    )


def clean_identity_folder(
    embeddings: np.ndarray,
    main_fraction: float = CLEAN_MAIN_FRACTION,
    eps_grid: tuple[float, ...] | list[float] | np.ndarray = CLEAN_EPS_GRID,
    max_eps: float = CLEAN_MAX_EPS,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    near_margin: float = 0.0,
) -> FolderCleaning:
    """Keep the faces of a folder's main identity cluster, with an eps chosen for this folder (paper 002).

    The grid (values above ``max_eps`` dropped, ``max_eps`` added as its last step) is tried from the smallest
    eps; the first at which the largest DBSCAN cluster holds ``>= main_fraction`` of the folder is used, and the
    faces outside that cluster are outliers. The grid's smallest value is a floor: a tight folder is not trimmed to
    its densest core. If no eps up to ``max_eps`` reaches the fraction, the largest cluster at ``max_eps`` is kept
    and ``reached_fraction`` is False. A single face is kept; a folder where no two faces are within ``max_eps``
    keeps nothing. One folder of :func:`clean_identity_folders`.
    """
    unit = np.asarray(embeddings)
    n = unit.shape[0] if unit.ndim == 2 else 0
    result = clean_identity_folders(embeddings, np.zeros(n, dtype=np.int64), main_fraction, eps_grid, max_eps,
                                    min_samples, near_margin)
    if n == 0:
        grid_floor = float(result.eps[0]) if result.eps.size else min(
            [float(e) for e in np.asarray(eps_grid).ravel() if e < max_eps] + [max_eps])
        return FolderCleaning(keep=np.ones(0, dtype=bool), eps=grid_floor, main_cluster_size=0,
                              reached_fraction=True, labels=np.zeros(0, dtype=np.int64),
                              nearest_main=np.zeros(0))
    return result.folder(0)


#: Doubt margins of :func:`doubtful_folders` (defaults of ``sameid build --judge``), for dlib's descriptors: a
#: folder is clear when its main cluster holds at least 80% of it (the public per-folder script of Hybrid
#: Generative Fusion tuned eps so that the main cluster held 50-80% and looked at the doubtful ones) and no outlier
#: lies within 0.02 cosine distance beyond the eps that was used (an outlier that nearly joined: a fifth of the
#: 0.097 that separated two different people in the test photos).
JUDGE_CLEAR_FRACTION = 0.8
JUDGE_MARGIN = 0.02


def doubtful_folders(cleanings: FolderCleanings, clear_fraction: float = JUDGE_CLEAR_FRACTION,
                     margin: float = JUDGE_MARGIN) -> dict[int, str]:
    """Folder code -> why its clustering decision is doubtful, for the folders that are (the others are clear).

    A folder of two or more faces is doubtful when (a) its main cluster holds less than ``clear_fraction`` of
    its faces (``reached_fraction`` False included), or (b) an outlier lies within ``margin`` beyond the folder's
    eps of the main cluster (``nearest_main <= eps + margin``). The cleaning must have searched that far
    (:func:`clean_identity_folders` with ``near_margin >= margin``).
    """
    if not 0.0 < clear_fraction <= 1.0:
        raise SameIdError(f"the judge's clear fraction must be in (0, 1], not {clear_fraction!r}")
    if not (np.isfinite(margin) and margin >= 0):
        raise SameIdError(f"the judge's margin must be a finite cosine distance >= 0, not {margin!r}")
    reasons: dict[int, str] = {}
    near = ~cleanings.keep & (cleanings.nearest_main <= cleanings.eps[cleanings.folders] + margin)
    near_count = np.bincount(cleanings.folders[near], minlength=cleanings.sizes.size)
    for code in np.flatnonzero(cleanings.sizes >= 2):
        size, main = int(cleanings.sizes[code]), int(cleanings.main_cluster_size[code])
        why = []
        if main < clear_fraction * size:
            why.append(f"main face cluster holds {main} of {size} faces (< {clear_fraction:.0%})")
        if near_count[code]:
            why.append(f"{near_count[code]} outlier(s) within {margin:g} of the main cluster beyond eps "
                       f"{cleanings.eps[code]:.3f}")
        if why:
            reasons[int(code)] = "; ".join(why)
    return reasons
