"""Checking and batching the inputs of sktransfer's estimators.

A named image backbone takes images; a text backbone (``"hf:..."``) takes
strings; a backbone given as a module takes numeric arrays as they are,
``(n, n_features)`` vectors or ``(n, C, H, W)`` images.
"""

import os

import numpy as np
import torch
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

from ._modules import scale_and_resize

IMAGE_FORMS = (
    "(n, H, W) grey, (n, H, W, 3) uint8, (n, 3, H, W) float in [0, 1], "
    "or a list (or pandas Series) of image file paths"
)


TEXT_FORMS = "a list, numpy array or pandas Series of str (or a one-column DataFrame)"


class ImagePaths(list):
    """A list of image file paths, read lazily batch by batch."""


class Texts(list):
    """A list of texts, tokenised batch by batch."""


def _one_column(X):
    """A pandas Series or one-column DataFrame as a 1-D array; anything else as it is."""
    if hasattr(X, "iloc") and getattr(X, "ndim", 0) == 2 and X.shape[1] == 1:
        X = X.iloc[:, 0]
    if hasattr(X, "iloc") and getattr(X, "ndim", 0) == 1:
        X = X.to_numpy()
    return X


def _paths_in(X):
    """The paths in ``X``, or None where ``X`` holds anything else.

    Paths come in a list, tuple or array, a pandas Series or a one-column
    DataFrame.
    """
    X = _one_column(X)
    if not isinstance(X, (list, tuple, np.ndarray)):
        return None
    if isinstance(X, np.ndarray) and X.dtype.kind not in "OU":
        return None
    if len(X) > 0 and all(isinstance(p, (str, os.PathLike)) for p in X):
        return list(X)
    return None


def _check_not_one_path(X):
    """Refuse one path, of a file or a folder, where a list of paths belongs."""
    if not isinstance(X, (str, os.PathLike)):
        return
    X = os.fspath(X)
    if os.path.isdir(X):
        raise ValueError(
            f"X={X!r} is a folder; pass a list of the paths of its image files, e.g. "
            f"sorted(glob.glob(os.path.join(X, '*.png')))."
        )
    raise ValueError(f"X={X!r} is a single path; pass a list of paths: [X].")


def _check_one_shape(X, hint):
    """Refuse a list of arrays of different shapes, which numpy cannot stack."""
    if not isinstance(X, (list, tuple)) or not all(hasattr(x, "shape") for x in X):
        return
    shapes = list(dict.fromkeys(tuple(x.shape) for x in X))
    if len(shapes) > 1:
        raise ValueError(
            f"X is a list of arrays of {len(shapes)} shapes, e.g. {shapes[0]} and "
            f"{shapes[1]}; {hint}"
        )


def _check_paths(X, backbone):
    paths = ImagePaths(os.fspath(p) for p in X)
    missing = [p for p in paths if not os.path.isfile(p)]
    if len(missing) == len(paths):  # strings, none a file: text, maybe
        raise ValueError(
            f"X holds {len(missing)} paths that are not files, e.g. {missing[0]!r}; "
            f"backbone={backbone!r} takes images: {IMAGE_FORMS}. Text needs a text "
            f"backbone: 'hf:<model name or local folder>'."
        )
    if missing:
        raise ValueError(f"X holds {len(missing)} paths that are not files, e.g. {missing[0]!r}.")
    return paths


def _channels_first(X):
    """Return a ``(n, C, H, W)`` view of an image array, C in {1, 3}."""
    if X.ndim == 3:
        return X[:, None]
    first, last = X.shape[1] in (1, 3), X.shape[-1] in (1, 3)
    if first and (not last or X.dtype != np.uint8):
        return X
    if last:
        return X.transpose(0, 3, 1, 2)
    raise ValueError(
        f"X has shape {X.shape}, which is not an image array with 1 or 3 channels; "
        f"the backbone takes {IMAGE_FORMS}."
    )


def check_images(X, backbone):
    """Validate image input for a named backbone.

    Returns :class:`ImagePaths` for paths, else an ``(n, C, H, W)`` view of
    the array, ``uint8`` or float in ``[0, 1]``, without copying it.
    """
    _check_not_one_path(X)
    paths = _paths_in(X)
    if paths is not None:
        return _check_paths(paths, backbone)
    _check_one_shape(
        X,
        "images in an array must share one size. Pass file paths for images of "
        "different sizes, or resize them to one size.",
    )
    X = _positive_strides(
        check_array(X, allow_nd=True, ensure_2d=False, dtype="numeric", input_name="X")
    )
    if X.ndim not in (3, 4):
        raise ValueError(
            f"X has shape {X.shape}, but backbone={backbone!r} takes images: {IMAGE_FORMS}."
        )
    if X.dtype != np.uint8:
        if X.dtype.kind != "f":
            raise ValueError(
                f"X has dtype {X.dtype}; images must be uint8 in [0, 255] or float in [0, 1]."
            )
        low, high = float(X.min()), float(X.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"X is a float image array with values in [{low:g}, {high:g}]; float "
                f"images must lie in [0, 1]. Pass uint8 images or divide by 255."
            )
    return _channels_first(X)


def check_texts(X, backbone):
    """Validate text input for a text backbone: a :class:`Texts` list of str."""
    if isinstance(X, str):
        raise ValueError(f"X is a single string; backbone={backbone!r} takes {TEXT_FORMS}: [X].")
    X = _one_column(X)
    if isinstance(X, np.ndarray) and X.ndim != 1:
        raise ValueError(
            f"X is an array of shape {X.shape}, but backbone={backbone!r} takes text: {TEXT_FORMS}."
        )
    if not isinstance(X, (list, tuple, np.ndarray)):
        raise ValueError(
            f"X is a {type(X).__name__}, but backbone={backbone!r} takes text: {TEXT_FORMS}."
        )
    wrong = next(((i, x) for i, x in enumerate(X) if not isinstance(x, str)), None)
    if wrong is not None:
        i, x = wrong
        raise ValueError(
            f"X[{i}] is a {type(x).__name__}, not a str: backbone={backbone!r} takes text: "
            f"{TEXT_FORMS}."
        )
    if len(X) == 0:
        raise ValueError(f"X holds no text; backbone={backbone!r} needs at least 1 sample.")
    return Texts(str(x) for x in X)


def check_module_input(estimator, X, reset):
    """Validate numeric input for a backbone given as a module."""
    paths = [X] if isinstance(X, (str, os.PathLike)) else _paths_in(X)
    if paths is not None:
        raise ValueError(
            f"X holds file paths (e.g. {os.fspath(paths[0])!r}), which only a named "
            f"image backbone reads; a backbone given as a module takes numeric arrays "
            f"(text takes a text backbone: 'hf:<model name or local folder>')."
        )
    _check_one_shape(X, "a backbone given as a module takes one array of inputs of one shape.")
    if getattr(X, "ndim", 2) > 2:
        if reset:
            forget_feature_count(estimator)
        X = check_array(X, allow_nd=True, dtype=np.float32, input_name="X")
    else:
        X = validate_data(estimator, X, reset=reset, dtype=np.float32)
    return _positive_strides(X)


def file_stamp(path):
    """``(path, mtime_ns, size)``: a file as it is now, for cache keys."""
    stat = os.stat(path)
    return (path, stat.st_mtime_ns, stat.st_size)


def forget_feature_count(estimator):
    """Drop ``n_features_in_`` from an earlier fit: n-D input has no feature count."""
    for name in ("n_features_in_", "feature_names_in_"):
        estimator.__dict__.pop(name, None)


def _positive_strides(X):
    """torch cannot wrap arrays with negative strides (``X[::-1]``): copy those."""
    return X.copy() if any(stride < 0 for stride in X.strides) else X


# Pillow modes of more than 8 bits per pixel, which ``convert("RGB")`` clips
# to 255: read as grey and divided by the top of their range.
_HIGH_DEPTH_MAX = {
    **dict.fromkeys(["I;16", "I;16B", "I;16L", "I;16N", "I"], 65535),
    "F": 1.0,
}


def read_image(path):
    """One image file as a ``(C, H, W)`` tensor at its own size.

    8-bit images come as ``uint8`` RGB; 16-bit grey images (Pillow modes
    ``"I;16"`` and ``"I"``) as float32 grey divided by 65535, and float
    images (mode ``"F"``) as they are, which must lie in ``[0, 1]``. Files
    that are not images, truncated or out of range raise a ValueError that
    names them.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
            pixels = np.asarray(img if mode in _HIGH_DEPTH_MAX else img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(
            f"X holds a file that could not be read as an image: {path!r} "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    if mode not in _HIGH_DEPTH_MAX:
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    top = _HIGH_DEPTH_MAX[mode]
    low, high = float(pixels.min()), float(pixels.max())
    if not (low >= 0 and high <= top):  # NaN too
        raise ValueError(
            f"X holds {path!r}, a mode {mode!r} image with values in [{low:g}, {high:g}]; "
            f"images of that mode must lie in [0, {top:g}]. Save it as an 8-bit or "
            f"16-bit image."
        )
    return torch.from_numpy((pixels / top).astype(np.float32))[None]


class TextDataset(torch.utils.data.Dataset):
    """The texts one by one; :meth:`collate` tokenises a batch, padded to its longest."""

    def __init__(self, texts, tokenize, y=None):
        self.texts = texts
        self.tokenize = tokenize
        self.y = y

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i], (0 if self.y is None else self.y[i])

    def collate(self, batch):
        texts, ys = zip(*batch)
        return self.tokenize(texts), torch.as_tensor(np.asarray(ys))


def group_by_length(X, preprocess):
    """``(X, restore)``: texts sorted by their number of tokens, longest first,
    and ``restore``, which puts outputs (one row per text, or None) back in
    the order of ``X``.

    Batches of texts of similar length are padded to little more than their
    own tokens (Rotten Tomatoes in batches of 32: 1.03 tokens computed per
    token, against 1.92 in the data's order). Longest first, the first batch
    shows the most memory a batch takes, and sizes estimated from it (the
    lower cuts a pass keeps) are bounds. Other input comes back as it is.
    """
    if not isinstance(X, Texts) or len(X) < 2:
        return X, _as_it_is
    order = np.argsort(-np.asarray(preprocess.lengths(X)), kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))

    def restore(out):
        return None if out is None else out[inverse]

    return Texts(X[i] for i in order), restore


def _as_it_is(out):
    return out


def to_device(x, device):
    """A batch (a tensor, or the tensors of a tuple: tokens of text) on ``device``."""
    if isinstance(x, (tuple, list)):
        return type(x)(t.to(device) for t in x)
    return x.to(device)


class ImagePathDataset(torch.utils.data.Dataset):
    """Read one image file per item and resize it as arrays are resized.

    Items are float32 ``(3, size, size)`` in ``[0, 1]``, from
    :func:`scale_and_resize`, which :class:`ImagePreprocess` then only
    normalises.
    """

    def __init__(self, paths, size, interpolation, y=None):
        self.paths = paths
        self.size = size
        self.interpolation = interpolation
        self.y = y

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        x = scale_and_resize(read_image(self.paths[i])[None], self.size, self.interpolation)
        return x[0], (0 if self.y is None else self.y[i])


def as_dataset(X, preprocess, y=None):
    """What skorch and the batch loop iterate over: arrays as they are, paths lazily,
    texts as a :class:`TextDataset` whose ``collate`` tokenises each batch."""
    if isinstance(X, ImagePaths):
        return ImagePathDataset(X, preprocess.size, preprocess.interpolation, y)
    if isinstance(X, Texts):
        return TextDataset(X, preprocess.tokenize, y)
    return X


def first_batch(X, preprocess):
    """One input as a batch of size one, for sizing the backbone's output."""
    if isinstance(X, ImagePaths):
        return as_dataset(X, preprocess)[0][0][None]
    return torch.as_tensor(np.ascontiguousarray(X[:1]))


def iter_batches(X, preprocess, batch_size, contiguous=False):
    """Yield input tensors of at most ``batch_size`` items, in order.

    Array batches are views of ``X``: a channels-last view (from
    ``(n, H, W, 3)`` images) stays channels last, which convolutions on the
    CPU run faster. ``contiguous=True`` gives C-contiguous batches, as the
    training loop's collated batches are, for bit-for-bit equal results.
    """
    if isinstance(X, ImagePaths):
        # A loader draws a seed per pass: from a generator of its own, so that
        # reading files leaves torch's RNG, which fit seeds, as arrays leave it.
        loader = torch.utils.data.DataLoader(
            as_dataset(X, preprocess), batch_size=batch_size, generator=torch.Generator()
        )
        for xb, _ in loader:
            yield xb
        return
    if isinstance(X, Texts):  # tokens, each batch padded to its longest text
        for start in range(0, len(X), batch_size):
            yield preprocess.tokenize(X[start : start + batch_size])
        return
    for start in range(0, len(X), batch_size):
        batch = X[start : start + batch_size]
        yield torch.as_tensor(np.ascontiguousarray(batch) if contiguous else batch)
