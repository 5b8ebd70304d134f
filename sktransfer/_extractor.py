"""PretrainedFeatureExtractor: a frozen pretrained backbone as a transformer."""

import os
from numbers import Integral

import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torchvision.models import WeightsEnum

from ._base import BackboneMixin, draw_seeds, seeded_build
from ._cache import PRECISIONS, embed
from ._compat import BackboneName, Interval, Options, validate_params


class PretrainedFeatureExtractor(
    BackboneMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Embed inputs with a frozen pretrained backbone, for any scikit-learn model.

    ``fit`` loads the backbone; ``transform`` returns its pooled output
    (global average of the last feature maps) as a float32 ``(n, d)`` array,
    computed in eval mode, without gradients, in batches.

    Parameters
    ----------
    backbone : str or torch.nn.Sequential, default="resnet18"
        A name from :func:`list_backbones`, any timm model as
        ``"timm:<model name>"``, a Hugging Face text encoder as
        ``"hf:<model name or local folder>"`` (its features: the checkpoint's
        sentence-embedding pooling), or an ``nn.Sequential`` of blocks that takes
        numeric arrays as they are (copied, never modified).
    weights : str, path, torchvision weights enum or None, default="DEFAULT"
        As in :class:`FineTunedClassifier`; ``None`` gives randomly
        initialised features, a baseline.
    batch_size : int, default=64
        Number of inputs per forward pass.
    input_size : int or None, default=None
        Side in pixels images are resized to; ``None`` uses the weights' own.
        Only for named backbones.
    max_length : int or None, default=None
        Number of tokens a text is truncated at, for a text backbone
        (``"hf:..."``); ``None`` uses the model's own limit (the
        ``max_seq_length`` of its sentence-transformers configuration, else
        the tokenizer's and the position embeddings' limit), capped at 256.
        At most the model's position embeddings. Only for text backbones.
    device : str, default="cpu"
        Torch device of the forward passes.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation of lazy layers and of ``weights=None``.
    precision : {"float32", "bfloat16", "float16"}, default="float32"
        ``"bfloat16"`` and ``"float16"`` run the forward passes under
        ``torch.autocast`` with that dtype (mixed precision), faster on GPUs
        with tensor cores. The features are float32 either way.
    channels_last : bool or "auto", default="auto"
        Put 4-D weights and inputs in ``torch.channels_last`` memory format.
        Convolutions on a CPU run faster in it, and so do those on GPUs with
        mixed precision. ``"auto"``: for a named image backbone on a CPU;
        never for a backbone given as a module (its code may need contiguous
        4-D tensors, as ``x.view(n, -1)`` does). Features are the same up to
        float rounding.
    verbose : int, default=0
        From 1, a progress bar on stderr follows ``transform`` over inputs of
        4 batches or more; 0 prints nothing.

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The frozen backbone, preprocessing included, in eval mode.
    n_features_in_ : int
        Number of features, for 2-D input to a module backbone.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features, when ``X`` has string column names.

    See Also
    --------
    FineTunedClassifier : Fine-tune the backbone with a new head.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> X = np.random.RandomState(0).normal(size=(10, 5))
    >>> backbone = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
    >>> PretrainedFeatureExtractor(backbone=backbone).fit_transform(X).shape
    (10, 8)
    """

    _parameter_constraints = {
        "backbone": [BackboneName(), nn.Sequential],
        "weights": [None, str, os.PathLike, WeightsEnum],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "input_size": [None, Interval(Integral, 1, None, closed="left")],
        "max_length": [None, Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "precision": [Options(set(PRECISIONS))],
        "channels_last": ["boolean", Options({"auto"})],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        backbone="resnet18",
        weights="DEFAULT",
        batch_size=64,
        input_size=None,
        max_length=None,
        device="cpu",
        random_state=None,
        precision="float32",
        channels_last="auto",
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.batch_size = batch_size
        self.input_size = input_size
        self.max_length = max_length
        self.device = device
        self.random_state = random_state
        self.precision = precision
        self.channels_last = channels_last
        self.verbose = verbose

    def fit(self, X, y=None):
        """Load the backbone and its weights.

        Parameters
        ----------
        X : array-like, or list or pandas Series of paths or of texts
            Images for a named backbone, arrays of one size or image files of
            any size (8-bit, or 16-bit grey); str for a text backbone; what
            the module takes for a module.
        y : None
            Ignored.

        Returns
        -------
        self : PretrainedFeatureExtractor
            The fitted transformer.
        """
        validate_params(self)
        with self._fitting():
            self._check_common_params()
            X = self._check_input(X, reset=True)
            with seeded_build(draw_seeds(self.random_state, 1)[0]):
                body = self._load_backbone(X)
            body.requires_grad_(False)
            self.backbone_ = body.eval().to(self.device)
            self._input_shape_ = self._module_input_shape(X)
        return self

    @property
    def _n_features_out(self):
        return self.backbone_.output_dim

    def transform(self, X):
        """Embed ``X`` with the frozen backbone.

        Parameters
        ----------
        X : array-like or list of paths
            Input in the form used for ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            Pooled backbone features, float32.
        """
        check_is_fitted(self)
        X = self._check_input(X, reset=False)
        self._check_device()  # set_params(device=...) after fit moves the backbone
        progress = f"{type(self).__name__}: transform" if self.verbose else None
        body = self.backbone_.to(self.device)
        return embed(body, X, *self._pass_options(), progress=progress)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
