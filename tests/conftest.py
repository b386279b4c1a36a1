"""Shared fixtures: the generated sample collection and one build of it, made once per test session."""

import hashlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    from sameid.demo.sample import make_sample

    return make_sample(tmp_path_factory.mktemp("sample") / "collection")


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def sample_digest_before_build(sample):
    return tree_digest(sample.root)


@pytest.fixture(scope="session")
def built_sample(sample, sample_digest_before_build, tmp_path_factory):
    from sameid.dataset.pipeline import BuildConfig, build_dataset

    out = tmp_path_factory.mktemp("built") / "dataset"
    config = BuildConfig(source=str(sample.metadata), out=str(out), image_root=str(sample.image_root), workers=2,
                         shard_size=16, is_generated_sample=True)
    return build_dataset(config, progress=False)


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch on one thread for a test module of tiny models: they gain nothing from a thread pool, and two
    spinning OpenMP threads per process on a shared 2-core machine make a step 5-10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
