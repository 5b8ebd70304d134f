"""FineTunedClassifier: new head, warm-up, then the top blocks fine-tuned."""

import functools
import os
import pickle
import threading
import warnings
from numbers import Integral, Real

import joblib
import numpy as np
import skorch
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    check_memory,
    validate_data,
)
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from skorch.dataset import unpack_data
from skorch.history import History
from skorch.utils import TeeGenerator, to_tensor
from threadpoolctl import ThreadpoolController
from torch import nn
from torchvision.models import WeightsEnum

from ._base import _RNG_LOCK, BackboneMixin, cuda_missing, draw_seeds, seeded_build, torch_seed
from ._cache import (
    FROZEN,
    PRECISIONS,
    VERSIONS,
    autocast,
    fit_key,
    frozen_outputs,
    memory_format,
    nbytes,
    stored_batches,
    training_inputs,
    weights_key,
)
from ._compat import BackboneName, HasMethods, Interval, Options, validate_params
from ._freeze import count_trainable
from ._input import as_dataset, group_by_length
from ._modules import TransferModule
from ._strategy import Frozen, LoRA, Scratch, UnfreezeTop, _peft

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
# Devices where "adam" and "adamw" run torch's fused implementation.
_FUSED = ("cpu", "cuda")


def _plain_arrays(dataset):
    """Whether ``dataset`` is skorch's over an array and labels, nothing else."""
    return (
        type(dataset) is skorch.dataset.Dataset
        and type(dataset.X) is np.ndarray
        and type(dataset.y) is np.ndarray
        and dataset.X.dtype != object
        and len(dataset.X) == len(dataset.y)
    )


class _ArrayDataset(torch.utils.data.Dataset):
    """Samples of an array and their labels, fetched a batch at a time.

    The loader asks ``__getitems__`` for a batch's indices: one indexing of
    each array, then ``collate`` makes tensors of them, the same tensors
    torch's default collation makes sample by sample.
    """

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]

    def __getitems__(self, indices):
        return self.X[indices], self.y[indices]

    @staticmethod
    def collate(batch):
        return tuple(torch.as_tensor(np.ascontiguousarray(a)) for a in batch)


class _TransferNet(NeuralNetClassifier):
    """skorch classifier whose optimizer only ever receives trainable parameters.

    ``precision`` and ``channels_last`` apply to every forward pass; with
    ``"float16"`` a ``GradScaler`` scales the loss.
    """

    precision = "float32"
    channels_last = False
    grad_scaler_ = None

    def get_all_learnable_params(self):
        for name, param in self.module_.named_parameters():
            if param.requires_grad:
                yield name, param

    def get_iterator(self, dataset, training=False):
        # Arrays: a batch is taken by one indexing, not sample by sample.
        if _plain_arrays(dataset):
            dataset = _ArrayDataset(dataset.X, dataset.y)
        loader = super().get_iterator(dataset, training)
        # Texts: the dataset's ``collate`` tokenises each batch, padded to its longest.
        collate = getattr(dataset, "collate", None)
        if collate is not None:
            loader.collate_fn = collate
        return loader

    def infer(self, x, **fit_params):
        x = memory_format(to_tensor(x, device=self.device), self.channels_last)
        with autocast(self.device, self.precision):
            return super().infer(x, **fit_params).float()

    def train_step_single(self, batch, **fit_params):
        if self.precision != "float16":
            return super().train_step_single(batch, **fit_params)
        self.module_.train()
        self.criterion_.train()
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        self.grad_scaler_.scale(loss).backward()
        self.grad_scaler_.unscale_(self.optimizer_)  # callbacks see the true gradients
        return {"loss": loss, "y_pred": y_pred}

    def train_step(self, batch, **fit_params):
        if self.precision != "float16":
            return super().train_step(batch, **fit_params)
        # The scaler steps the optimizer (skipping steps with inf or nan
        # gradients) and then updates its scale: no closure for optimizer.step.
        if self.grad_scaler_ is None:
            self.grad_scaler_ = torch.amp.GradScaler(torch.device(self.device).type)
        self.optimizer_.zero_grad()
        step = self.train_step_single(batch, **fit_params)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        self.grad_scaler_.step(self.optimizer_)
        self.grad_scaler_.update()
        return step

    def __getstate__(self):
        # Pickles hold the fitted weights, not the optimizer (or scaler) state.
        optimizer, self.optimizer_ = getattr(self, "optimizer_", None), None
        scaler, self.grad_scaler_ = self.grad_scaler_, None
        try:
            state = super().__getstate__()
        finally:
            self.optimizer_ = optimizer
            self.grad_scaler_ = scaler
        # ``module`` is the instance that became ``module_``: pickle the weights once.
        if isinstance(state.get("module"), nn.Module):
            state["module"] = type(state["module"])
        return state

    def __setstate__(self, state):
        # Where CUDA is missing, skorch loads the tensors of a net fitted on a
        # GPU on the CPU, and warns; the estimator that holds this net warns once.
        if state.get("device") is not None and cuda_missing(state["device"]):
            state = {**state, "device": "cpu"}
        super().__setstate__(state)
        if "module_" in self.__dict__:
            self.module = self.module_

    def move_to(self, device):
        """Put the fitted module and criterion on ``device``, for what runs next."""
        if torch.device(device) != torch.device(self.device):
            self.module_.to(device)
            self.criterion_.to(device)
            self.set_params(device=device)


def fit_probe(features, y):
    """Coefficients and intercepts of a logistic regression on ``features``.

    Softmax over ``n_classes`` logits; for two classes the logits ``(0, z)``
    give the sigmoid of ``z``. BLAS runs on one thread here, whatever the
    process's setting: the probe alternates between NumPy's and SciPy's
    BLAS (a wheel of each brings its own OpenBLAS), whose idle threads spin
    while the other works, and after the probe, while torch trains
    (``benchmarks/probe_threads.py``: on 2 cores, 160 samples took 533 ms on
    the default threads and 34 ms on one; 10,000 samples, 564 and 224 ms).
    """
    # One probe at a time: each puts back the threads it found, which another's
    # limit must not be (another thread's own limit over a probe may still win).
    with _BLAS_LOCK, _blas_threads().limit(limits=1, user_api="blas"):
        probe = LogisticRegression(max_iter=1000).fit(features, y)
    coef, intercept = probe.coef_.astype(np.float32), probe.intercept_.astype(np.float32)
    if coef.shape[0] == 1:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return coef, intercept


_BLAS_LOCK = threading.Lock()


@functools.cache
def _blas_threads():
    """threadpoolctl's controller of the BLAS libraries loaded, and of them
    only: putting back their threads then leaves OpenMP's (torch's) alone.
    Made once: finding them takes milliseconds, limiting them microseconds."""
    return ThreadpoolController().select(user_api="blas")


def _set_head(head, coef, intercept):
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(coef))
        head.bias.copy_(torch.as_tensor(intercept))


class _Recipe(Callback):
    """Move the module from strategy to strategy at the epochs of ``schedule``.

    The module starts with ``first``; ``schedule`` maps an epoch (1-based) to
    the strategy that begins there, whose parameter groups join the
    optimizer (fresh optimizer state) at their own learning rates while the
    head keeps its group. Each epoch's phase and number of trainable
    parameters go to the history.
    """

    def __init__(self, first, schedule):
        self.first = first
        self.schedule = schedule

    def on_train_begin(self, net, **kwargs):
        self.n_trainable_ = count_trainable(net.module_)

    def on_epoch_begin(self, net, **kwargs):
        epoch = len(net.history)
        strategy = self.schedule.get(epoch)
        if strategy is not None:
            for group in net.module_.use(strategy):
                net.optimizer_.add_param_group(group)
            self.n_trainable_ = count_trainable(net.module_)  # changes only here
        started = [e for e in self.schedule if e <= epoch]
        phase = (self.schedule[max(started)] if started else self.first).phase
        net.history.record("phase", phase)
        net.history.record("n_trainable_params", self.n_trainable_)


def _warmup_state(net):
    """What a warm-up leaves of ``net`` that later epochs depend on, pickled.

    Tensors are kept as arrays (:func:`_arrays`) and the whole is pickled to
    bytes here: ``joblib.Memory`` reads those back much faster than the
    objects themselves (its unpickler is written in Python, and reads each
    tensor with a ``torch.load`` of its own).
    """
    state = _arrays(
        {
            "head": net.module_.head.state_dict(),
            "optimizer": net.optimizer_.state_dict(),
            "shuffle": net.iterator_train__generator.get_state(),
            "rng": torch.get_rng_state(),
            "history": net.history.to_list(),
        }
    )
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def _restore_warmup(net, state):
    """Put ``net`` in the state of :func:`_warmup_state`."""
    state = _tensors(pickle.loads(state))
    net.module_.head.load_state_dict(state["head"])
    net.optimizer_.load_state_dict(state["optimizer"])
    net.iterator_train__generator.set_state(state["shuffle"])
    with _RNG_LOCK:
        torch.set_rng_state(state["rng"])
    net.history_ = History(state["history"])


class _Array:
    """A tensor kept as a NumPy array (:func:`_arrays`)."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __getstate__(self):
        return self.array

    def __setstate__(self, array):
        self.array = array


def _arrays(value):
    """``value`` with each tensor in its dicts, lists and tuples as an
    :class:`_Array` (viewing the tensor's memory on the CPU: pickle it before
    training goes on); a tensor NumPy cannot hold (``bfloat16``) as it is."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value if value.dtype == torch.bfloat16 else _Array(value.numpy())
    if isinstance(value, dict):
        return type(value)((k, _arrays(v)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_arrays(v) for v in value)
    return value


def _tensors(value):
    """:func:`_arrays` undone, on what pickle gave back: each :class:`_Array`
    a new tensor."""
    if isinstance(value, _Array):
        return torch.tensor(value.array)
    if isinstance(value, dict):
        return type(value)((k, _tensors(v)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_tensors(v) for v in value)
    return value


def _warm_up_by_key(features, y, start, settings, run):
    """``run()``, the warm-up, for ``joblib.Memory``, which ignores ``run``: the
    features' key, labels, starting state and settings stand for it."""
    return run()


def _fit_probe_by_key(features, y, pooled):
    """:func:`fit_probe` on ``pooled`` for ``joblib.Memory``, which ignores
    ``pooled``: ``features``, their key, stands for them."""
    return fit_probe(pooled, y)


class FineTunedClassifier(BackboneMixin, ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained backbone with a new head, the transfer recipe.

    One ``fit`` replaces the backbone's head with a linear layer for the
    classes of ``y``, starts it from a logistic regression on the frozen
    backbone's features (``warmup="linear_probe"``) or at random, trains it
    alone for ``warmup_epochs`` epochs with the backbone frozen, then
    unfreezes the top ``unfreeze_depth`` blocks and trains them at
    ``backbone_lr`` (times ``layer_decay ** k`` for the block ``k`` places
    below the top) while the head keeps ``lr``, until ``max_epochs``.
    BatchNorm layers stay in eval mode, statistics and affine parameters
    frozen, unless ``train_bn=True``. With ``strategy="lora"`` the top blocks
    stay frozen and low-rank adapters on their linear layers train instead,
    merged into the weights at the end of ``fit``. With ``weights=None`` the same
    architecture is randomly initialised and trained from scratch: every
    parameter at ``lr``, no warm-up, BatchNorm training.

    Training goes through a skorch ``NeuralNetClassifier`` (``net_``).

    Parameters
    ----------
    backbone : str or torch.nn.Sequential, default="resnet18"
        An image backbone by name: one from :func:`list_backbones`
        (torchvision's, and ``"efficientnet_lite0"``) or any timm model as
        ``"timm:<model name>"`` (``"timm:convnext_atto"``,
        ``"timm:vit_tiny_patch16_224"``). A Hugging Face text encoder as
        ``"hf:<model name or local folder>"``, which takes a list of str (see
        the user guide's "Text backbones"). Or an ``nn.Sequential`` whose
        children are the ordered blocks, which takes numeric arrays as they
        are. The module is copied, never modified. It may start with lazy
        layers (``nn.LazyLinear``), sized on the data at fit.
    weights : str, path, torchvision weights enum or None, default="DEFAULT"
        ``"DEFAULT"``: the default pretrained weights of a name (downloaded by
        torchvision or timm; ``efficientnet_lite0``'s come from a package),
        the module's own weights for a module. A torchvision weights enum
        member or its name (``"IMAGENET1K_V1"``). A path to a state-dict
        file, read with ``weights_only=True``. ``None``: random
        initialisation, trained from scratch.
    unfreeze_depth : int or "all", default=1
        Number of backbone blocks, counted from the top, trained (or adapted,
        with ``strategy="lora"``) after the warm-up; 0 trains the head only.
    strategy : {"unfreeze", "lora"}, default="unfreeze"
        How the top ``unfreeze_depth`` blocks fine-tune. ``"unfreeze"``: their
        parameters train. ``"lora"``: they stay frozen, and low-rank adapters
        (LoRA, through peft: ``pip install "sktransfer[lora]"``) added to
        their ``nn.Linear`` and 1x1 ``nn.Conv2d`` layers train at
        ``backbone_lr`` (times ``layer_decay ** k``); BatchNorm, norms and
        dropout stay frozen and in eval mode. At the end of ``fit`` the
        adapters are merged into the weights: the fitted model is plain torch
        modules, loadable without peft. LoRA usually wants about 10 times the
        ``backbone_lr`` of unfreezing. Not with ``weights=None``.
    lora_rank : int, default=8
        Rank of each adapter (``strategy="lora"``).
    lora_alpha : float, default=16.0
        Scale of the adapters: their update is multiplied by
        ``lora_alpha / lora_rank`` (``strategy="lora"``).
    lora_dropout : float, default=0.0
        Dropout on the adapters' input while training, in ``[0, 1)``
        (``strategy="lora"``).
    lr : float, default=1e-3
        Learning rate of the head (and of every parameter with ``weights=None``).
    backbone_lr : float, default=1e-4
        Learning rate of the top unfrozen block (of its adapters with
        ``strategy="lora"``).
    layer_decay : float, default=1.0
        Factor in ``(0, 1]`` applied once per block going down.
    warmup : {"linear_probe", "epochs"}, default="linear_probe"
        How the new head starts. ``"linear_probe"``: from a scikit-learn
        ``LogisticRegression`` fitted on the frozen backbone's features of the
        training set (linear probe, then fine-tune). ``"epochs"``: from a
        random initialisation. Either way ``warmup_epochs`` epochs of
        head-only training follow. A head that starts at the probe is
        already good: an ``lr`` well below ``backbone_lr`` keeps it there
        while the top blocks adapt. Ignored with ``weights=None``.
    warmup_epochs : int, default=1
        Epochs with the backbone frozen and only the head training.
    max_epochs : int, default=10
        Total number of epochs, warm-up included.
    batch_size : int, default=32
        Batch size for training and prediction.
    input_size : int or None, default=None
        Side in pixels images are resized to; ``None`` uses the weights' own.
        Only for named backbones.
    max_length : int or None, default=None
        Number of tokens a text is truncated at, for a text backbone
        (``"hf:..."``); ``None`` uses the model's own limit (the
        ``max_seq_length`` of its sentence-transformers configuration, else
        the tokenizer's and the position embeddings' limit), capped at 256.
        At most the model's position embeddings. Only for text backbones.
    train_bn : bool, default=False
        Whether BatchNorm layers of unfrozen blocks update their statistics and
        affine parameters. Ignored with ``strategy="lora"``.
    optimizer : {"adam", "adamw", "sgd"} or torch optimizer class, default="adam"
        ``"sgd"`` uses momentum 0.9. ``"adam"`` and ``"adamw"`` use torch's
        fused implementation on a CPU or a CUDA GPU (``fused=True``): the
        same update in fewer passes over the weights. A class is used as
        torch makes it.
    weight_decay : float, default=0.0
        Weight decay of every parameter group.
    random_state : int, RandomState instance or None, default=None
        Seeds every random draw of ``fit``: weight initialisation
        (``weights=None``, lazy layers), the new head, batch shuffling, and
        dropout. Fits in threads give the same results as alone, except
        where training draws from torch's global generator (dropout).
    device : str, default="cpu"
        Torch device to train and predict on.
    precision : {"float32", "bfloat16", "float16"}, default="float32"
        ``"bfloat16"`` and ``"float16"`` run every forward pass under
        ``torch.autocast`` with that dtype (mixed precision: the weights stay
        float32, ``"float16"`` scales the loss with a ``GradScaler``). Faster
        on GPUs with tensor cores; on a CPU only where it has bfloat16 or
        float16 instructions. With ``"float16"`` the frozen-feature cache
        keeps activations in float16, half the memory. Probabilities are
        float32 either way.
    channels_last : bool or "auto", default="auto"
        Put 4-D weights and inputs in ``torch.channels_last`` memory format.
        Convolutions on a CPU run faster in it, and so do those on GPUs with
        mixed precision. ``"auto"``: for a named image backbone on a CPU;
        never for a backbone given as a module (its code may need contiguous
        4-D tensors, as ``x.view(n, -1)`` does). Results are the same up to
        float rounding.
    frozen_cache : bool, default=True
        Compute the output of frozen blocks once per ``fit`` and train the
        head (and the top blocks) on it, instead of running frozen blocks on
        every batch of every epoch. Frozen blocks run in eval mode and there
        is no random augmentation, so the result is the same; it is off
        where every block trains (``weights=None``). Memory: one float32
        activation tensor per training sample at the cut (``verbose`` prints
        its size); for text, the hidden states of the sample's own tokens,
        padded again per batch.
    memory : str, joblib.Memory or None, default=None
        Where to keep the frozen blocks' outputs across fits, as in
        ``Pipeline(memory=...)``: a folder or a ``joblib.Memory``. Every
        candidate of a search with the same backbone, weights, preprocessing,
        cut (``unfreeze_depth``), batch size and training data reuses them,
        also with ``GridSearchCV(n_jobs=2)``; a pass also keeps the outputs
        at up to 3 lower cuts (256 MiB at most), and a pass to a higher cut
        continues a stored one to a lower cut, so the frozen blocks run over
        each fold once whatever the order of the depths searched. The linear
        probe and the state the warm-up epochs end in are kept too: candidates
        that differ only after the warm-up run it once per fold, each
        continuing exactly as it would alone. In one process, passes share
        samples too: the folds of a search overlap, so the recent passes'
        outputs are kept by sample (256 MiB at most, never on disk) and a pass
        runs the frozen blocks only over the samples none of them has (up to
        float rounding, a sample's outputs do not depend on its batch). Only
        used where the frozen cache is on.
        A model fitted with ``memory`` also keeps in process (never on disk)
        the frozen outputs of the inputs it predicted last, up to 256 MiB,
        so the candidates of a search score each validation fold from the
        same ones; ``memory=None`` turns it off for a model to serve.
    verbose : int, default=0
        Verbosity of skorch's per-epoch log and of the cache. From 1, a
        progress bar on stderr follows the frozen blocks' pass over the
        training set (for the cache or the linear probe) where it takes 4
        batches or more.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Number of features, for 2-D input to a module backbone.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features, when ``X`` has string column names.
    net_ : skorch.NeuralNetClassifier
        The fitted net; its module is backbone blocks plus head.
    n_blocks_ : int
        Number of blocks of the backbone.
    unfreeze_depth_ : int
        Number of top blocks trained after the warm-up (``n_blocks_`` for
        ``weights=None``; 0 when ``max_epochs == warmup_epochs``).
    n_trainable_params_ : dict
        Number of trainable parameters in each phase (``"warmup"``,
        ``"finetune"`` or ``"scratch"``); with ``strategy="lora"``, the
        ``"finetune"`` phase counts the adapters' and the head's.
    history_ : list of dict
        Per epoch: ``epoch``, ``phase``, ``train_loss`` and ``dur`` (seconds).

    See Also
    --------
    PretrainedFeatureExtractor : Frozen backbone as a transformer.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import FineTunedClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 5)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)
    >>> backbone = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
    >>> clf = FineTunedClassifier(backbone=backbone, unfreeze_depth=2, lr=1e-2,
    ...                           backbone_lr=1e-3, max_epochs=5, random_state=0)
    >>> clf.fit(X, y).predict(X[:3]).shape
    (3,)
    >>> [row["phase"] for row in clf.history_]
    ['warmup', 'finetune', 'finetune', 'finetune', 'finetune']
    """

    _parameter_constraints = {
        "backbone": [BackboneName(), nn.Sequential],
        "weights": [None, str, os.PathLike, WeightsEnum],
        "unfreeze_depth": [Interval(Integral, 0, None, closed="left"), Options({"all"})],
        "strategy": [Options({"unfreeze", "lora"})],
        "lora_rank": [Interval(Integral, 1, None, closed="left")],
        "lora_alpha": [Interval(Real, 0, None, closed="neither")],
        "lora_dropout": [Interval(Real, 0, 1, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr": [Interval(Real, 0, None, closed="neither")],
        "layer_decay": [Interval(Real, 0, 1, closed="right")],
        "warmup": [Options({"linear_probe", "epochs"})],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "input_size": [None, Interval(Integral, 1, None, closed="left")],
        "max_length": [None, Interval(Integral, 1, None, closed="left")],
        "train_bn": ["boolean"],
        "optimizer": [Options(set(_OPTIMIZERS)), type],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "precision": [Options(set(PRECISIONS))],
        "channels_last": ["boolean", Options({"auto"})],
        "frozen_cache": ["boolean"],
        "memory": [None, str, HasMethods(["cache"])],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        backbone="resnet18",
        weights="DEFAULT",
        unfreeze_depth=1,
        strategy="unfreeze",
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=0.0,
        lr=1e-3,
        backbone_lr=1e-4,
        layer_decay=1.0,
        warmup="linear_probe",
        warmup_epochs=1,
        max_epochs=10,
        batch_size=32,
        input_size=None,
        max_length=None,
        train_bn=False,
        optimizer="adam",
        weight_decay=0.0,
        random_state=None,
        device="cpu",
        precision="float32",
        channels_last="auto",
        frozen_cache=True,
        memory=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.unfreeze_depth = unfreeze_depth
        self.strategy = strategy
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.layer_decay = layer_decay
        self.warmup = warmup
        self.warmup_epochs = warmup_epochs
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.input_size = input_size
        self.max_length = max_length
        self.train_bn = train_bn
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.frozen_cache = frozen_cache
        self.memory = memory
        self.verbose = verbose

    def fit(self, X, y):
        """Fit the head, then fine-tune the top blocks.

        Parameters
        ----------
        X : array-like, or list or pandas Series of paths or of texts
            Images for a named backbone, arrays of one size or image files of
            any size (8-bit, or 16-bit grey); str for a text backbone; what
            the module takes for a module.
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self : FineTunedClassifier
            The fitted estimator.
        """
        validate_params(self)
        with self._fitting():
            self._check_common_params()
            if self.warmup_epochs > self.max_epochs:
                raise ValueError(
                    f"warmup_epochs={self.warmup_epochs} exceeds max_epochs={self.max_epochs}; "
                    f"use 0 <= warmup_epochs <= max_epochs (in a HalvingGridSearchCV with "
                    f"resource='max_epochs', min_resources >= warmup_epochs)."
                )
            if self.strategy == "lora":
                self._check_lora()
            y = validate_data(self, X="no_validation", y=y)
            X = self._check_input(X, reset=True)
            check_consistent_length(X, y)
            check_classification_targets(y)
            encoder = LabelEncoder().fit(y)
            if len(encoder.classes_) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes in y; "
                    f"got 1 class: {encoder.classes_.tolist()[0]!r}."
                )
            self._fit(X, encoder.transform(y).astype(np.int64), encoder.classes_)
        return self

    def _check_lora(self):
        if self.weights is None:
            raise ValueError(
                "strategy='lora' adds adapters to pretrained weights, but weights=None "
                "trains every parameter from scratch; use strategy='unfreeze' with "
                "weights=None (in a search, give weights=None a grid of its own)."
            )
        _peft()  # an ImportError saying what to install, before any work

    def _check_lora_targets(self, body, strategy):
        """A LoRA fine-tuning must find layers to adapt in its top blocks."""
        if not isinstance(strategy, LoRA) or not strategy.depth or strategy.targets(body):
            return
        name = self.backbone if isinstance(self.backbone, str) else "the backbone module"
        top = [type(b).__name__ for b in body.blocks[len(body.blocks) - strategy.depth :]]
        raise ValueError(
            f"strategy='lora' adapts nn.Linear and 1x1 nn.Conv2d layers, but the top "
            f"unfreeze_depth={self.unfreeze_depth!r} blocks of {name} ({', '.join(top)}, "
            f"and the pooling) have none; use a larger unfreeze_depth or "
            f"strategy='unfreeze'."
        )

    def _check_unfreeze_depth(self, n_blocks):
        depth = self.unfreeze_depth
        if depth != "all" and depth > n_blocks:
            name = self.backbone if isinstance(self.backbone, str) else "the backbone module"
            raise ValueError(
                f"unfreeze_depth={depth}, but {name} has {n_blocks} blocks; use "
                f"0..{n_blocks} or 'all'."
            )

    def _trained_depth(self, n_blocks):
        """Number of top blocks that really train after the warm-up."""
        if self.weights is None:
            return n_blocks
        depth = n_blocks if self.unfreeze_depth == "all" else self.unfreeze_depth
        if depth and self.max_epochs == self.warmup_epochs:
            warnings.warn(
                f"max_epochs={self.max_epochs} equals warmup_epochs={self.warmup_epochs}: no "
                f"epoch is left after the warm-up, so only the head trains and "
                f"unfreeze_depth_ is 0, not {self.unfreeze_depth!r}. Use max_epochs > "
                f"warmup_epochs to fine-tune blocks.",
                UserWarning,
            )
            return 0
        return depth

    def _make_net(self, module, recipe, n_samples, shuffle_seed):
        optimizer = _OPTIMIZERS.get(self.optimizer, self.optimizer)
        kwargs = {"optimizer__weight_decay": self.weight_decay}
        if optimizer is torch.optim.SGD:
            kwargs["optimizer__momentum"] = 0.9
        elif self.optimizer in ("adam", "adamw") and torch.device(self.device).type in _FUSED:
            kwargs["optimizer__fused"] = True
        if not self.verbose:  # skorch's PrintLog makes its table at every epoch
            kwargs["callbacks__print_log"] = None
        net = _TransferNet(
            module=module,
            criterion=nn.CrossEntropyLoss,
            optimizer=optimizer,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            train_split=None,
            iterator_train__shuffle=True,
            # Loaders draw from generators of their own, never from torch's global one.
            iterator_train__generator=torch.Generator().manual_seed(shuffle_seed),
            iterator_valid__generator=torch.Generator(),
            # A last batch of one sample breaks BatchNorm in train mode: leave it
            # out (shuffling leaves out another sample each epoch).
            iterator_train__drop_last=n_samples % self.batch_size == 1,
            callbacks=[("recipe", recipe)],
            device=self.device,
            verbose=self.verbose,
            torch_load_kwargs={"weights_only": False},
            **kwargs,
        )
        net.precision, net.channels_last = self.precision, self._channels_last()
        return net

    def _fit(self, X, y, classes):
        # One stream each: weights built, head, shuffling, and what training
        # draws from torch's global generator (dropout).
        # strategy="lora" draws a fifth seed, for the adapters' initialisation.
        seeds = draw_seeds(self.random_state, 5 if self.strategy == "lora" else 4)
        build_seed, head_seed, shuffle_seed, train_seed = seeds[:4]
        with seeded_build(build_seed):
            body = self._load_backbone(X, check_n_blocks=self._check_unfreeze_depth)
        lora_seed = seeds[4] if self.strategy == "lora" else None
        first, schedule = self._schedule(len(body.blocks), lora_seed)
        last = schedule[max(schedule)] if schedule else first
        self._check_lora_targets(body, last)
        head_generator = torch.Generator().manual_seed(head_seed)
        module = TransferModule(body, len(classes), first, generator=head_generator)
        net = self._make_net(module, _Recipe(first, schedule), len(y), shuffle_seed)
        cut = last.cut(len(body.blocks))  # blocks below it never train
        cache_off = self._why_no_frozen_cache()
        if cache_off and self.verbose:
            print(f"{type(self).__name__}: frozen-feature cache off: {cache_off}.")
        with torch_seed(train_seed):
            # With memory, frozen outputs are shared by the key of the weights as loaded.
            source = None if cache_off or self.memory is None else weights_key(body)
            data = None if source is None else fit_key(source, X)  # the data hashed once
            frozen = None if cache_off else self._frozen_inputs(body, X, cut, source, data)
            # With memory, the key of the pooled features keys the probe and warm-up.
            features = None if data is None else self._features_key(data)
            if self.weights is not None and self.warmup == "linear_probe":
                self._start_head_at_probe(module, X, y, frozen, features)
            if frozen is None:
                net.fit(as_dataset(X, body.preprocess, y), y)
            else:
                self._fit_on_frozen_inputs(net, X, y, cut, *frozen, features)
        net.module_.finish(last)  # LoRA: adapters merged, plain torch modules
        # Fitted attributes are set together, once training has succeeded.
        self.classes_ = classes
        self.n_blocks_ = len(body.blocks)
        self.unfreeze_depth_ = self.n_blocks_ - cut
        self.net_ = net
        self.history_ = [
            {
                "epoch": row["epoch"],
                "phase": row["phase"],
                "train_loss": float(row["train_loss"]),
                "dur": float(row["dur"]),
            }
            for row in net.history
        ]
        self.n_trainable_params_ = {row["phase"]: row["n_trainable_params"] for row in net.history}
        self._frozen_source_ = source if cut > 0 else None
        self._frozen_cut_ = cut
        self._input_shape_ = self._module_input_shape(X)
        return self

    def _schedule(self, n_blocks, lora_seed=None):
        """The strategy a fit starts with, and those that follow by epoch."""
        if self.weights is None:  # one phase: every parameter from the first epoch
            return Scratch(), {}
        depth = self._trained_depth(n_blocks)
        if self.strategy == "lora":
            strategy = LoRA(
                depth,
                self.backbone_lr,
                self.layer_decay,
                rank=self.lora_rank,
                alpha=self.lora_alpha,
                dropout=self.lora_dropout,
                seed=lora_seed,
            )
        else:
            strategy = UnfreezeTop(depth, self.backbone_lr, self.layer_decay, self.train_bn)
        return Frozen(), {self.warmup_epochs + 1: strategy}

    def _start_head_at_probe(self, module, X, y, frozen, features=None):
        """Set the head to a logistic regression on the frozen backbone's features."""
        if frozen is None:  # the features the cache would hold, computed alike
            body = module.body.to(self.device)
            pooled, _ = frozen_outputs(
                body, X, len(body.blocks), *self._pass_options(), progress=self._progress()
            )
            coef, intercept = fit_probe(pooled, y)
        else:  # candidates of a search on the same fold share the probe
            probe = self._cached(_fit_probe_by_key, ignore=["pooled"])
            coef, intercept = probe(features, y, frozen[0])
        _set_head(module.head, coef, intercept)

    def _cached(self, func, ignore=None):
        """``func``, kept by ``memory`` when there is one."""
        if self.memory is None:
            return func
        return check_memory(self.memory).cache(func, ignore=ignore)

    def _why_no_frozen_cache(self):
        """Why the frozen-feature cache cannot be used, or None where it can."""
        if not self.frozen_cache:
            return "frozen_cache=False"
        if self.weights is None:
            return "weights=None trains every block"
        return None

    def _frozen_inputs(self, body, X, cut, source, data=None):
        """What the frozen blocks give for every training sample, computed once.

        Returns ``(pooled, activations)``: the pooled features of the frozen
        backbone, and the activations entering the first trainable block
        ``cut`` (None when only the head trains, or when every block trains and
        the activations would only be the preprocessed input).
        With ``memory``, they are kept on disk, keyed by ``source`` (the
        backbone's architecture, weights and preprocessing), the cut, the
        batch size and the data, so candidates of a search on the same fold
        share them; a pass to a cut continues the stored pass with the
        closest lower cut on the same data, if any. ``data``: their
        :func:`~sktransfer._cache.fit_key`.
        """
        body.eval().to(self.device)
        options = self._pass_options()
        progress = self._progress()
        if self.memory is None:
            pooled, activations = frozen_outputs(body, X, cut, *options, progress=progress)
        else:
            pooled, activations = FROZEN.fit_outputs(
                self.memory, body, X, cut, source, options, progress, key=data
            )
        if self.verbose:
            size = nbytes(activations if activations is not None else pooled) / 2**20
            print(
                f"{type(self).__name__}: frozen-feature cache: {len(pooled)} samples "
                f"cut before block {cut} of {len(body.blocks)}, {size:.1f} MiB."
            )
        return pooled, activations

    def _features_key(self, data):
        """What the frozen backbone's pooled features are made of, hashed: the
        weights as loaded, the data and the versions (``data``, a
        :func:`~sktransfer._cache.fit_key`), and the pass options the stored
        passes are keyed by. The probe and the warm-up kept by ``memory`` are
        keyed by it rather than by the features' bytes, as the stored passes
        are: they are the same features up to the device's float rounding."""
        batch_size, _, precision, channels_last = self._pass_options()
        return joblib.hash((data, batch_size, precision, channels_last))

    def _progress(self):
        """The description of the frozen pass's progress bar; None at ``verbose=0``."""
        return f"{type(self).__name__}: frozen blocks" if self.verbose else None

    def _fit_on_frozen_inputs(self, net, X, y, cut, pooled, activations, features=None):
        """Train on cached frozen outputs: pooled features in the warm-up, then
        the activations at the cut while the top blocks fine-tune."""
        module = net.initialize().module_
        warmup = self.warmup_epochs
        if cut == len(module.body.blocks):
            stage, inputs = "pooled", pooled
        elif activations is None:  # every block trains
            stage, inputs = "raw", as_dataset(X, module.body.preprocess, y)
        else:  # the array, or (text) a dataset whose collate pads each batch
            stage, inputs = cut, training_inputs(module.body, activations, y)
        try:
            if warmup:
                module.input_stage = "pooled"
                self._warm_up(net, pooled, y, features)
            if self.max_epochs > warmup:
                module.input_stage = stage
                net.partial_fit(inputs, y, epochs=self.max_epochs - warmup)
        finally:
            module.input_stage = "raw"

    def _warm_up(self, net, pooled, y, features=None):
        """The head-only epochs on the pooled features.

        With ``memory``, the state they end in is kept: candidates of a search
        that differ only after the warm-up (``unfreeze_depth``, ``backbone_lr``,
        ``layer_decay``, ``strategy``, ...) train it once per fold. The key is
        all the warm-up starts from: the features (by :meth:`_features_key`),
        labels, the head's initial weights, the shuffling and global
        generators' states, and the settings of its epochs; a fit that finds
        it continues from exactly the state it would have computed (head,
        optimizer, generators, history).
        """
        if self.memory is None or self.precision == "float16":  # a GradScaler's state
            net.partial_fit(pooled, y, epochs=self.warmup_epochs)
            return

        def run():
            net.partial_fit(pooled, y, epochs=self.warmup_epochs)
            return _warmup_state(net)

        head = net.module_.head
        start = {
            "head": [p.detach().cpu().numpy() for p in (head.weight, head.bias)],
            "shuffle": net.iterator_train__generator.get_state().numpy(),
            "rng": torch.get_rng_state().numpy(),
        }
        epochs = (self.optimizer, self.lr, self.weight_decay, self.warmup_epochs)
        batches = (self.batch_size, net.iterator_train__drop_last)
        versions = (*VERSIONS, skorch.__version__)  # skorch runs the epochs
        # "pickled arrays": the form _warmup_state stores (dicts of tensors before).
        settings = (epochs, batches, self.precision, str(self.device), versions, "pickled arrays")
        state = self._cached(_warm_up_by_key, ignore=["run"])(features, y, start, settings, run)
        _restore_warmup(net, state)

    def predict_proba(self, X):
        """Class probabilities, computed in eval mode in batches.

        Parameters
        ----------
        X : array-like or list of paths
            Input in the form used for ``fit``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities, columns in the order of ``classes_``.
        """
        check_is_fitted(self)
        X = self._check_input(X, reset=False)
        self._check_device()  # set_params(device=...) after fit moves the model
        self.net_.move_to(self.device)
        module = self.net_.module_
        source = getattr(self, "_frozen_source_", None)
        if self.memory is None or source is None:
            X, restore = group_by_length(X, module.body.preprocess)  # texts: less padding
            return restore(self.net_.predict_proba(as_dataset(X, module.body.preprocess)))
        # The frozen blocks' outputs, shared with other models (the candidates
        # of a search scoring the same validation fold); then the rest.
        cut = self._frozen_cut_
        inputs = FROZEN.predict_outputs(module.body, X, cut, source, self._pass_options())
        stage = "pooled" if cut == self.n_blocks_ else cut
        module.eval()
        batches = stored_batches(
            module.body, inputs, self.batch_size, self.device, self._channels_last()
        )
        logits = []
        with torch.no_grad(), autocast(self.device, self.precision):
            for xb in batches:
                logits.append(module.forward_from(xb, stage).float())
        return torch.softmax(torch.cat(logits), dim=-1).cpu().numpy()

    def predict(self, X):
        """Most probable class of each sample.

        Parameters
        ----------
        X : array-like or list of paths
            Input in the form used for ``fit``.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted class labels.
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
