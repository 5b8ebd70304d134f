"""Dataset helpers: the synthetic transfer family and Fashion-MNIST's idx files."""

import gzip

import numpy as np
import pytest

from sktransfer import datasets
from sktransfer.datasets import fetch_fashion_mnist, make_transfer_classification


def test_transfer_family_shares_structure_across_calls():
    X1, y1 = make_transfer_classification([3, 7], 4, random_state=0)
    X2, y2 = make_transfer_classification([3, 7], 4, random_state=0)
    np.testing.assert_array_equal(X1, X2)
    assert sorted(set(y1.tolist())) == [3, 7]
    X3, _ = make_transfer_classification([3, 7], 4, random_state=0, task_seed=1)
    assert not np.allclose(X1, X3)
    with pytest.raises(ValueError, match=r"classes=\[25\] must be indices in \[0, 25\)"):
        make_transfer_classification([25], 4)


def _write_idx(folder, name, array, header):
    with gzip.open(folder / name, "wb") as f:
        f.write(bytes(header) + array.tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    rng = np.random.RandomState(0)
    sizes = {"train": 5, "test": 3}
    expected = []
    for split, (images, labels) in datasets._IDX_FILES.items():
        X = rng.randint(0, 256, size=(sizes[split], 28, 28)).astype(np.uint8)
        y = rng.randint(0, 10, size=sizes[split]).astype(np.uint8)
        _write_idx(tmp_path, images, X, [0] * 16)
        _write_idx(tmp_path, labels, y, [0] * 8)
        expected += [X, y]
    arrays = fetch_fashion_mnist(data_home=str(tmp_path), download=False)
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)
    assert arrays[1].dtype == np.int64


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fetch_fashion_mnist(data_home=str(tmp_path), download=False)
