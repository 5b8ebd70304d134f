"""The frozen-feature cache: frozen blocks run once over the data, their outputs kept.

Blocks below the strategy's cut never train, run in eval mode and see no
random augmentation, so their outputs are computed once and reused:

- within one fit, the training loop trains on them (:func:`frozen_outputs`);
- with ``memory``, on disk across fits (:meth:`FrozenStore.fit_outputs`):
  the candidates of a search with the same backbone, weights and training
  data share them; a pass to a higher cut continues a stored lower one;
- in process, for the inputs predicted last by models with ``memory``
  (:meth:`FrozenStore.predict_outputs`): the candidates of a search score
  each validation fold from the same outputs;
- in process, by sample, for the recent passes of models with ``memory``
  (:meth:`FrozenStore._from_input`): a search's folds overlap, and each
  sample runs through the frozen blocks once.

Activations of one shape for every sample (images, vectors) are kept as one
array. Where each sample's have a length of its own (text, padded per batch)
the body's ``activations`` splits them: an object array holds one array per
sample, and the body's ``collate`` pads each batch again when training and
predicting (:func:`stored_batches`, :func:`training_inputs`).

``FROZEN`` is the one store; :func:`clear_cache` empties it and the store of
loaded backbones.
"""

import hashlib
import math
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager

import joblib
import numpy as np
import torch
from sklearn.utils.validation import check_memory
from tqdm import tqdm

from . import __version__
from ._input import ImagePaths, Texts, file_stamp, group_by_length, iter_batches, to_device

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# In disk keys: another release may compute (or read files) otherwise.
VERSIONS = (__version__, torch.__version__)
# A first pass to a cut also keeps the activations entering up to LOWER_CUTS
# blocks below it, LOWER_BYTES at most together: then the candidates of a search
# listing depths in any order run the frozen blocks over each fold once.
LOWER_CUTS = 3
LOWER_BYTES = 256 * 2**20


@contextmanager
def autocast(device, precision):
    """``torch.autocast`` to the dtype of ``precision``; nothing for ``"float32"``."""
    dtype = PRECISIONS[precision]
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        yield


def memory_format(x, channels_last):
    """``x`` in channels-last memory format where asked and 4-D, else as it is
    (tokens of text, a tuple, too)."""
    if channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# Passes of fewer batches run without a progress bar.
PROGRESS_MIN_BATCHES = 4


def with_progress(batches, n_samples, batch_size, progress):
    """``batches`` behind a tqdm bar on stderr, described by ``progress``; as they
    are where ``progress`` is None or the pass is short."""
    total = math.ceil(n_samples / batch_size)
    if progress is None or total < PROGRESS_MIN_BATCHES:
        return batches
    return tqdm(batches, total=total, desc=progress, unit="batch", file=sys.stderr, leave=False)


def _input_batches(body, X, batch_size, device, channels_last, contiguous):
    """Preprocessed batches of ``X``; ``contiguous`` ones compute exactly as the
    training loop's collated batches do."""
    for xb in iter_batches(X, body.preprocess, batch_size, contiguous=contiguous):
        yield body.preprocess(memory_format(to_device(xb, device), channels_last))


def _kept(body, a, dtype):
    """One batch of activations as the cache keeps it: an array of ``dtype``, or
    an object array of each sample's own where the body splits them."""
    if getattr(body, "activations", None) is None:  # bodies pickled before it
        kept = a.to(dtype).cpu()
        # A copy, not a view: the next block may change its input in place.
        return (kept.clone() if kept.data_ptr() == a.data_ptr() else kept).numpy()
    items = body.activations.split(a, dtype)
    kept = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        kept[i] = item
    return kept


def nbytes(stored):
    """Bytes of stored activations or features, per-sample arrays included."""
    if stored.dtype == object:
        return sum(a.nbytes for a in stored)
    return stored.nbytes


def stored_batches(body, stored, batch_size, device, channels_last):
    """Batches of stored activations (or pooled features), in order; float16
    ones compute in float32 (or autocast). Per-sample ones go through the
    body's ``collate``, padded to the longest of each batch."""
    if stored.dtype == object:
        for start in range(0, len(stored), batch_size):
            batch = body.activations.collate(list(stored[start : start + batch_size]))
            yield to_device(batch, device)
        return
    for a in iter_batches(stored, None, batch_size):  # copies: blocks may work in place
        yield memory_format(a.to(device, copy=True), channels_last).float()


class _StoredDataset(torch.utils.data.Dataset):
    """Per-sample activations and labels; :meth:`collate` pads a batch."""

    def __init__(self, stored, collate, y):
        self.stored = stored
        self.collate_inputs = collate
        self.y = y

    def __len__(self):
        return len(self.stored)

    def __getitem__(self, i):
        return self.stored[i], self.y[i]

    def collate(self, batch):
        items, ys = zip(*batch)
        return self.collate_inputs(list(items)), torch.as_tensor(np.asarray(ys))


def training_inputs(body, stored, y):
    """What the training loop takes for stored activations: the array, or a
    dataset whose ``collate`` pads per-sample ones batch by batch."""
    if stored.dtype != object:
        return stored
    return _StoredDataset(stored, body.activations.collate, y)


def run_blocks(body, batches, begin, end, device, precision, keep, finish):
    """Run blocks ``begin`` to ``end - 1`` of ``body`` over ``batches``.

    In eval mode, without gradients. Returns ``(activations, pooled)``: the
    activations leaving block ``end - 1`` where ``keep`` (float16 with
    ``precision="float16"``, float32 otherwise), and where ``finish`` the
    pooled float32 features after the remaining blocks and the pooling; None
    otherwise.
    """
    kept, pooled = run_blocks_keeping(
        body, batches, begin, end, device, precision, (end,) if keep else (), finish
    )
    return kept.get(end), pooled


def run_blocks_keeping(
    body, batches, begin, end, device, precision, cuts, finish, n_samples=None, lower=()
):
    """:func:`run_blocks`, keeping the activations entering each block of ``cuts``
    (each in ``begin + 1 .. end``) and, within :data:`LOWER_BYTES` for
    ``n_samples`` samples, those entering each block of ``lower`` too.

    Returns ``({cut: activations}, pooled)``. Which of ``lower`` fit is decided on
    the first batch, the closest to ``end`` first; the values do not depend
    on it: each block computes what it computes in a pass of its own.
    """
    stored = torch.float16 if precision == "float16" else torch.float32
    was_training = body.training
    body.eval()
    keep, deciding = set(cuts) | set(lower), bool(lower)
    kept, pooled = {k: [] for k in keep}, []
    with torch.no_grad(), autocast(device, precision):
        for a in batches:
            for k, block in enumerate(body.blocks[begin:end], start=begin + 1):
                a = block(a)
                if k in keep:
                    kept[k].append(_kept(body, a, stored))
            if deciding:  # after the first batch: which lower cuts fit
                keep, deciding = set(cuts) | _within_budget(kept, lower, n_samples), False
                kept = {k: kept[k] for k in keep}
            if finish:
                pooled.append(body.run_from(a, end).float().cpu().numpy())
    body.train(was_training)
    return (
        {k: np.concatenate(batches) for k, batches in kept.items()},
        np.concatenate(pooled) if finish else None,
    )


def _within_budget(kept, lower, n_samples):
    """The cuts of ``lower`` whose activations for ``n_samples`` fit in
    :data:`LOWER_BYTES` (:func:`_lower_within_bytes`), estimated from the
    first batch kept (texts run longest first: for them, a bound)."""
    sizes = {k: nbytes(kept[k][0]) * n_samples / max(len(kept[k][0]), 1) for k in lower}
    return _lower_within_bytes(sizes)


def _lower_within_bytes(sizes):
    """The cuts of ``sizes`` (a cut's bytes), closest to the top first, that
    take :data:`LOWER_BYTES` at most together."""
    chosen, total = set(), 0
    for k in sorted(sizes, reverse=True):
        total += sizes[k]
        if total > LOWER_BYTES:
            break
        chosen.add(k)
    return chosen


def lower_cuts(cut, n_blocks):
    """The cuts below ``cut`` whose activations a first pass to ``cut`` also keeps."""
    return tuple(range(max(1, cut - LOWER_CUTS), min(cut, n_blocks)))


def _run_from_input(body, X, cut, options, cuts, finish, lower=(), progress=None, contiguous=True):
    """:func:`run_blocks_keeping` from the input ``X`` to ``cut``, ``options``
    being ``(batch_size, device, precision, channels_last)``: texts run in
    batches of similar length, and the outputs come back in the order of ``X``.
    ``progress``: the description of a progress bar (:func:`with_progress`)."""
    batch_size, device, precision, channels_last = options
    grouped, restore = group_by_length(X, body.preprocess)
    batches = _input_batches(body, grouped, batch_size, device, channels_last, contiguous)
    batches = with_progress(batches, len(X), batch_size, progress)
    kept, pooled = run_blocks_keeping(
        body, batches, 0, cut, device, precision, cuts, finish, len(X), lower
    )
    return {k: restore(a) for k, a in kept.items()}, restore(pooled)


def embed(body, X, batch_size, device, precision="float32", channels_last=False, progress=None):
    """Pooled features of ``X`` through the whole ``body``.

    Batches keep the input's memory layout (channels-last images run faster).
    ``progress``: the description of a progress bar (:func:`with_progress`).
    """
    options = (batch_size, device, precision, channels_last)
    return _run_from_input(body, X, 0, options, (), True, progress=progress, contiguous=False)[1]


def frozen_outputs(
    body,
    X,
    cut,
    batch_size,
    device,
    precision="float32",
    channels_last=False,
    start=None,
    progress=None,
):
    """What a fit trains on: ``(pooled, activations)`` of ``X``.

    ``pooled``: the features of the whole frozen backbone (for the linear
    probe and the warm-up). ``activations``: those entering block ``cut``,
    None unless ``0 < cut < n_blocks`` (at 0 they would be the preprocessed
    input, larger than the data and no cheaper to train on).

    ``start``, ``(k, pooled, activations)`` from a pass over the same ``X``
    to a cut ``0 < k <= cut``, continues it: only blocks ``k`` to ``cut`` run.
    ``progress``: the description of a progress bar (:func:`with_progress`).
    """
    n_blocks = len(body.blocks)
    keep = 0 < cut < n_blocks
    if start is None:
        options = (batch_size, device, precision, channels_last)
        own = (cut,) if keep else ()
        kept, pooled = _run_from_input(body, X, cut, options, own, True, progress=progress)
        return pooled, kept.get(cut)
    begin, pooled, earlier = start
    if begin == cut or not keep:
        return pooled, earlier if keep else None
    batches = stored_batches(body, earlier, batch_size, device, channels_last)
    batches = with_progress(batches, len(earlier), batch_size, progress)
    return pooled, run_blocks(body, batches, begin, cut, device, precision, True, False)[0]


def _frozen_outputs_by_key(
    body, X, cut, batch_size, device, precision, channels_last, key, start=None, progress=None
):
    """:func:`frozen_outputs` for ``joblib.Memory``, which ignores ``body``,
    ``X``, ``device``, ``start`` and ``progress``: ``key`` stands for body and data."""
    return frozen_outputs(
        body, X, cut, batch_size, device, precision, channels_last, start, progress
    )


def _tensor_bytes(tensor):
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return str(tensor.dtype), tuple(tensor.shape), data


def weights_key(body):
    """Content hash of a backbone: architecture, weights and preprocessing.

    Pretrained weights still as loaded are identified by their ``source`` (the
    backbone's name and the weights enum member, or the file's path, mtime
    and size) and the architecture by the repr the body was built with
    (``Body.architecture``, kept with the body and its copies: a repr walks
    every submodule); other weights are hashed by their bytes, dtype and
    shape (``joblib.hash`` of a tensor depends on its memory address).
    """
    config = getattr(body.preprocess, "config", None)
    if body.source is not None:  # as built: its repr, if it was kept then
        architecture = getattr(body, "architecture", None) or repr(body)
        return joblib.hash((architecture, config, body.source))
    state = {k: _tensor_bytes(v) for k, v in body.state_dict().items()}
    return joblib.hash((repr(body), config, state))


def fit_key(source, X):
    """The key of what frozen blocks give for ``X`` in a fit, with ``memory``:
    ``source`` (:func:`weights_key`), the data and the library versions,
    hashed."""
    return joblib.hash((source, data_key(X), VERSIONS))


def data_key(X):
    """What identifies input data in a cache key: the array, or the files as they are."""
    if isinstance(X, ImagePaths):  # files rewritten in place must not hit the cache
        return [file_stamp(path) for path in X]
    return X


def row_keys(X):
    """``(kind, keys)``: what identifies each sample of ``X`` in process, and the
    kind of input they are keys of (dtype and shape of an array's rows); None
    for input the rows of which are not kept."""
    if isinstance(X, ImagePaths):  # files rewritten in place must not match
        return "paths", [file_stamp(path) for path in X]
    if isinstance(X, Texts):
        return "texts", list(X)
    if isinstance(X, np.ndarray) and X.dtype != object and len(X):
        keys = [
            hashlib.blake2b(np.ascontiguousarray(row).data, digest_size=16).digest() for row in X
        ]
        return (X.dtype.str, X.shape[1:]), keys
    return None


def take_rows(X, index):
    """The samples of ``X`` at ``index``, in the input's own form."""
    if isinstance(X, (ImagePaths, Texts)):
        return type(X)(X[i] for i in index)
    return X[index]


class _Pass:
    """The outputs of one pass over some samples: ``outputs`` maps a cut (or
    ``"pooled"``) to an array with a row per sample, ``index`` a sample's key
    to its row."""

    def __init__(self, keys, outputs):
        self.index = {key: i for i, key in enumerate(keys)}
        self.outputs = outputs
        self.nbytes = sum(nbytes(a) for a in outputs.values())


def _find(passes, keys, indices, names):
    """``(found, missing)``: for each sample ``keys[i]`` of ``indices``, the
    first of ``passes`` that kept all of ``names`` for it, as ``(pass, row)``,
    or its index in ``missing``."""
    found, missing = {}, []
    for i in indices:
        for done in passes:
            j = done.index.get(keys[i])
            if j is not None and all(name in done.outputs for name in names):
                found[i] = (done, j)
                break
        else:
            missing.append(i)
    return found, missing


def _assemble(found, order, names, lower=()):
    """The outputs ``names``, and those of ``lower`` (cuts) that every pass used
    kept and that fit in :data:`LOWER_BYTES` (each pass held its own samples
    to it), for the samples ``order`` (keys of ``found``), in order."""
    sources = {}
    for at, i in enumerate(order):
        done, j = found[i]
        rows = sources.setdefault(id(done), (done, [], []))
        rows[1].append(at)
        rows[2].append(j)
    sources = list(sources.values())
    out = {name: _gather(sources, len(order), name) for name in names}
    shared = [k for k in lower if all(k in s[0].outputs for s in sources)]
    cuts = {k: _gather(sources, len(order), k) for k in shared}
    for k in _lower_within_bytes({k: nbytes(a) for k, a in cuts.items()}):
        out[k] = cuts[k]
    return out


def _gather(sources, n, name):
    """Rows of output ``name`` for ``n`` samples from ``sources``, a list of
    ``(pass, rows in the result, rows in the pass)``."""
    first = sources[0][0].outputs[name]
    out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    for done, at, rows in sources:
        stored = done.outputs[name]
        if stored.dtype == object:  # per-sample arrays, set one by one
            for i, j in zip(at, rows):
                out[i] = stored[j]
        else:
            out[at] = stored[rows]
    return out


class FrozenStore:
    """Frozen outputs kept across fits: on disk with ``memory``, and in process.

    In process it keeps two things, each within ``max_bytes``: for the inputs
    predicted last, what the blocks below each cut give (inputs seen least
    recently go first; ``len`` counts them), and the outputs of the recent
    passes from the input by sample (:meth:`_from_input`; the oldest passes go
    first). It is locked for threads.
    """

    def __init__(self, max_bytes=256 * 2**20):
        self.max_bytes = max_bytes
        self._recent = OrderedDict()
        self._passes = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._recent)

    def clear(self):
        """Forget the outputs kept in process (the disk cache is ``memory``'s)."""
        with self._lock:
            self._recent.clear()
            self._passes.clear()

    def _from_input(self, body, X, cut, options, cuts, finish, lower, progress, source):
        """:func:`_run_from_input`, taking the samples a recent pass computed from it.

        A search's folds overlap: with ``cv=3`` every training part shares
        half its samples with each other one, and each validation part lies
        in the other folds' training parts. So the outputs of each pass from
        the input are kept in process (within ``max_bytes``, the oldest passes
        dropped first) by sample, keyed by ``source``, ``options`` and what
        identifies the sample (:func:`row_keys`); a later pass with the same
        keys runs the blocks over the samples no kept pass has, with all the
        outputs asked for, only. A sample's outputs do not depend on the
        other samples of its batch (blocks below a cut run in eval mode), up
        to float rounding.
        """
        rows = None if source is None else row_keys(X)
        if rows is None:
            return _run_from_input(body, X, cut, options, cuts, finish, lower, progress)
        kind, keys = rows
        batch_size, device, precision, channels_last = options
        key = (source, batch_size, str(device), precision, channels_last, kind)
        wanted = [*cuts, "pooled"] if finish else list(cuts)
        with self._lock:
            passes = [done for k, done in reversed(self._passes.values()) if k == key]
        found, missing = _find(passes, keys, range(len(keys)), wanted)
        if missing and finish and cuts and precision != "float16":
            # Kept at the cut without pooled features (scored below the top):
            # only the blocks above the cut run, on the kept activations.
            part, missing = _find(passes, keys, missing, cuts)
            if part:
                order = list(part)
                outputs = _assemble(part, order, cuts, lower)
                batches = stored_batches(body, outputs[cut], batch_size, device, channels_last)
                outputs["pooled"] = run_blocks(
                    body, batches, cut, cut, device, precision, False, True
                )[1]
                done = _Pass([keys[i] for i in order], outputs)
                self._keep(key, done)
                found.update((i, (done, j)) for j, i in enumerate(order))
        if missing:
            some = X if len(missing) == len(keys) else take_rows(X, missing)
            kept, pooled = _run_from_input(body, some, cut, options, cuts, finish, lower, progress)
            outputs = dict(kept) if pooled is None else {**kept, "pooled": pooled}
            done = _Pass([keys[i] for i in missing], outputs)
            self._keep(key, done)
            if len(missing) == len(keys):
                return kept, pooled
            found.update((i, (done, j)) for j, i in enumerate(missing))
        kept = _assemble(found, range(len(keys)), wanted, lower)
        return kept, kept.pop("pooled", None)

    def _keep(self, key, done):
        with self._lock:
            self._passes[id(done)] = (key, done)
            size = sum(d.nbytes for _, d in self._passes.values())
            while size > self.max_bytes and self._passes:
                size -= self._passes.popitem(last=False)[1][1].nbytes

    def fit_outputs(self, memory, body, X, cut, source, options, progress=None, key=None):
        """:func:`frozen_outputs` kept by ``memory`` (a folder or ``joblib.Memory``).

        The key is ``source`` (:func:`weights_key` of the weights as loaded),
        the data, the cut, ``options`` (batch size, device, precision,
        channels-last) and the library versions. A pass to a cut with nothing
        stored continues the stored pass to the closest lower cut. A pass
        from the input also stores, each under its own cut, the activations
        entering the blocks of :func:`lower_cuts` that fit in
        :data:`LOWER_BYTES`. ``progress``: the description of a progress bar
        over a pass that runs. ``key``: :func:`fit_key` of ``source`` and ``X``,
        where the caller has it.
        """
        cached = check_memory(memory).cache(
            _frozen_outputs_by_key, ignore=["body", "X", "device", "start", "progress"]
        )
        key = fit_key(source, X) if key is None else key
        if cached.check_call_in_cache(body, X, cut, *options, key=key):
            return cached(body, X, cut, *options, key=key)
        for k in range(cut - 1, 0, -1):
            if cached.check_call_in_cache(body, X, k, *options, key=key):
                start = (k, *cached(body, X, k, *options, key=key))
                return cached(body, X, cut, *options, key=key, start=start, progress=progress)
        n_blocks = len(body.blocks)
        own = (cut,) if 0 < cut < n_blocks else ()
        lower = lower_cuts(cut, n_blocks)
        kept, pooled = self._from_input(body, X, cut, options, own, True, lower, progress, source)
        # Each stored as the pass to its cut gives it (``start`` at that cut runs nothing).
        for k in sorted(set(kept) - {cut}):
            if not cached.check_call_in_cache(body, X, k, *options, key=key):
                cached(body, X, k, *options, key=key, start=(k, pooled, kept[k]))
        return cached(body, X, cut, *options, key=key, start=(cut, pooled, kept.get(cut)))

    def predict_outputs(self, body, X, cut, source, options):
        """What the blocks below ``cut`` give for ``X``: the activations
        entering block ``cut``, or the pooled features at the last cut.

        ``source`` is the :func:`weights_key` of the frozen blocks as loaded:
        blocks below ``cut`` never train, so models with the same backbone
        share the result. A cut continues the closest lower one kept; a pass
        from the input also keeps the lower cuts of :func:`lower_cuts` that
        fit in :data:`LOWER_BYTES`.
        """
        batch_size, device, precision, channels_last = options
        key = joblib.hash((source, batch_size, precision, channels_last, data_key(X)))
        with self._lock:
            entry = self._recent.pop(key, {})
            self._recent[key] = entry
            stored = entry.get(cut)
            lower = max((k for k in entry if k < cut), default=None)
        if stored is not None:
            return stored
        n_blocks = len(body.blocks)
        last = cut == n_blocks
        own = () if last else (cut,)
        if lower is None:  # no pooled features below the top: trained blocks give them
            kept, pooled = self._from_input(
                body, X, cut, options, own, last, lower_cuts(cut, n_blocks), None, source
            )
        else:
            batches = stored_batches(body, entry[lower], batch_size, device, channels_last)
            kept, pooled = run_blocks_keeping(
                body, batches, lower, cut, device, precision, own, last
            )
        stored = pooled if last else kept[cut]
        with self._lock:
            entry.update(kept)
            entry[cut] = stored
            size = sum(nbytes(a) for e in self._recent.values() for a in e.values())
            while size > self.max_bytes and len(self._recent) > 1:
                size -= sum(nbytes(a) for a in self._recent.popitem(last=False)[1].values())
        return stored


FROZEN = FrozenStore()


def clear_cache():
    """Forget the backbones and frozen outputs kept in this process.

    sktransfer keeps the last pretrained backbones it loaded (so that the
    next candidate of a search copies one instead of reading its weights
    again) and the frozen blocks' outputs for the inputs predicted last and the
    samples of recent passes, of models fitted with ``memory``. This frees
    them; a ``memory`` folder on
    disk is cleared with ``joblib.Memory(folder).clear()``. (Which timm
    architectures' blocks were checked to reproduce the model, once each, is
    kept: that depends on the code alone.)

    Examples
    --------
    >>> from sktransfer import clear_cache
    >>> clear_cache()
    """
    from .backbones import PRISTINE

    PRISTINE.clear()
    FROZEN.clear()
