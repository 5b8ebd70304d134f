"""The torch modules that sktransfer's estimators train and pickle."""

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from ._freeze import (
    MODULE_TRAIN,
    parameters_of,
    set_modes,
    submodules,
    tensors_of,
    trains_as_module,
)


class ImagePreprocess(nn.Module):
    """Turn a batch of ``(n, C, H, W)`` images into what the weights expect.

    ``uint8`` input is scaled to ``[0, 1]``, one channel is repeated to three,
    the images are resized to ``size`` x ``size`` (:func:`scale_and_resize`)
    and normalised with the weights' mean and standard deviation.
    """

    def __init__(self, size, mean, std, interpolation="bilinear"):
        super().__init__()
        self.size = int(size)
        self.interpolation = interpolation
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def config(self):
        return (self.size, self.interpolation)

    def forward(self, x):
        x = scale_and_resize(x, self.size, self.interpolation)
        return (x - self.mean) / self.std

    def sample(self):
        """One input batch of the size the weights expect, to size a body's output."""
        return torch.zeros(1, 3, self.size, self.size)


class TextPreprocess(nn.Module):
    """A text model's tokenizer: :meth:`tokenize` turns a batch of strings into
    ``(input_ids, attention_mask)``; ``forward`` passes those through.

    Tokenising happens where batches are made (a loader's ``collate_fn``), on
    the CPU: strings are not tensors. Texts are truncated at ``max_length``
    tokens and each batch is padded to its longest text.
    """

    def __init__(self, tokenizer, max_length, source=None, stamp=None):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.source = source
        self.stamp = stamp  # the tokenizer's files as they were read, for cache keys

    @property
    def config(self):
        return (self.source, self.max_length, getattr(self, "stamp", None))

    def tokenize(self, texts):
        tokens = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return tokens["input_ids"], tokens["attention_mask"]

    def lengths(self, texts):
        """Each text's number of tokens, at most ``max_length``."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]

    def sample(self):
        return self.tokenize(["a"])

    def forward(self, x):
        return x

    def extra_repr(self):
        return f"source={self.source!r}, max_length={self.max_length}"


def scale_and_resize(x, size, interpolation):
    """``(n, C, H, W)`` images as float32 in ``[0, 1]``, 3 channels, ``size`` x ``size``.

    The one resize of sktransfer, for arrays (in :class:`ImagePreprocess`) and
    image files (when read) alike: ``uint8`` input is divided by 255, one
    channel is repeated to three, and images of another size are resized by
    ``F.interpolate``, antialiased for ``"bilinear"`` and ``"bicubic"``.
    Float32 images of the right size pass through unchanged.
    """
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    else:
        x = x.to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (size, size):
        antialias = interpolation in ("bilinear", "bicubic")
        x = F.interpolate(x, size=(size, size), mode=interpolation, antialias=antialias)
    return x


def pool_features(x):
    """Global-average-pool 4-D feature maps; flatten anything else to 2-D."""
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    return x.flatten(1)


class GlobalPool(nn.Module):
    """:func:`pool_features` as a module."""

    def forward(self, x):
        return pool_features(x)


class _MovesWhereNeeded(nn.Module):
    """A module whose ``to(device)`` returns at once where every parameter
    and buffer is on that device already (:func:`_on_device`)."""

    def to(self, *args, **kwargs):
        return self if _on_device(self, args, kwargs) else super().to(*args, **kwargs)


class Body(_MovesWhereNeeded):
    """Preprocessing, then the ordered blocks, then pooling to ``(n, d)``.

    ``pool`` takes the last block's output to features; by default it
    averages feature maps globally (:func:`pool_features`). ``activations``
    says how the frozen-feature cache keeps the activations between blocks
    where each sample's have a length of its own (text, see
    :class:`~sktransfer.backbones.BackboneSpec`); None: one array.
    """

    def __init__(self, blocks, preprocess=None, pool=None, activations=None):
        super().__init__()
        self.preprocess = preprocess if preprocess is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.pool = pool if pool is not None else GlobalPool()
        self.activations = activations
        self.output_dim = None
        # Identifies the pretrained weights while they are as loaded; None
        # once any block may have trained, and for other weights.
        self.source = None
        self.architecture = None  # repr(self) where the body was built with a source

    def forward(self, x):
        return self.run_from(self.preprocess(x), 0)

    def train(self, mode=True):
        """``nn.Module.train``, in one flat walk where that does the same
        (:func:`~sktransfer._freeze.set_modes`)."""
        if not set_modes(self, mode):
            super().train(mode)
        return self

    def run_from(self, x, start):
        """Pooled output for ``x``, the activations entering block ``start``."""
        for block in self.blocks[start:]:
            x = block(x)
        if _channels_last_with_grad(x):
            x.register_hook(_channels_last_gradient)
        return self.pool(x)

    def infer_output_dim(self, sample):
        """Run ``sample`` once in eval mode, without gradients, to size the output.

        Eval mode keeps BatchNorm statistics where they are; the same pass
        materialises lazy layers.
        """
        was_training = self.training
        self.eval()
        with torch.no_grad():
            self.output_dim = int(self(sample).shape[1])
        self.train(was_training)
        return self.output_dim


MODULE_TRAIN.add(Body.train)


def _on_device(module, args, kwargs):
    """Whether ``module.to(*args, **kwargs)`` only names a device that every
    parameter and buffer of ``module`` is on: then it changes nothing, but
    ``nn.Module.to`` would still visit every submodule and tensor (a few
    times the cost of this check; skorch moves the module at each fit)."""
    if kwargs or len(args) != 1 or not isinstance(args[0], (str, torch.device)):
        return False
    device = torch.device(args[0])
    if device.type == "cuda" and device.index is None:  # where "cuda" puts tensors
        if not torch.cuda.is_available():
            return False  # nn.Module.to says why
        device = torch.device("cuda", torch.cuda.current_device())
    return all(t.device == device for t in tensors_of(module))


def _channels_last_with_grad(x):
    """Whether ``x`` is a 4-D tensor that the blocks made with a gradient to
    come, channels-last and not also contiguous (1 x 1 maps are both)."""
    return (
        isinstance(x, torch.Tensor)
        and x.grad_fn is not None  # made by the blocks (not an input to hook again)
        and x.ndim == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def _channels_last_gradient(grad):
    """The gradient reaching the last block's channels-last output, laid out
    channels-last (a tensor hook of :meth:`Body.run_from`).

    Pooling a channels-last feature map to ``(n, C)`` gives a backward that
    broadcasts the gradient back over the map: a layout that is neither
    channels-last nor contiguous. The top block's backward (activation,
    BatchNorm, convolution) then takes slow paths for mixed layouts and
    converts its weight's gradient; one copy of the gradient here avoids
    them (EfficientNet-Lite0's last block at 64 px: a training step about
    0.9 ms faster, 25%). The gradients are those of the same operations on a
    channels-last gradient: equal up to float rounding (where BatchNorm
    trains, sums may run in another order).
    """
    return grad.contiguous(memory_format=torch.channels_last)


def new_head(in_features, out_features, generator=None):
    """``nn.Linear`` initialised as torch does it, drawing from ``generator``.

    Its own generator keeps the head's weights apart from every other draw in
    the process, fits in other threads included.
    """
    head = torch.nn.utils.skip_init(nn.Linear, in_features, out_features)
    with torch.no_grad():  # nn.Linear.reset_parameters, with a generator
        nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(head.bias, -bound, bound, generator=generator)
    return head


_training = operator.attrgetter("training")


class TransferModule(_MovesWhereNeeded):
    """A :class:`Body` with a new linear head, trained as a strategy says.

    :meth:`use` applies a strategy (see :mod:`sktransfer._strategy`): which
    backbone parameters train, and which modules ``train()`` keeps in eval
    mode (the preprocessing always); :meth:`finish` ends it.

    ``input_stage`` says what the input is: ``"raw"`` data, an int ``k`` for
    the activations entering block ``k`` (computed once by frozen blocks), or
    ``"pooled"`` backbone features.
    """

    def __init__(self, body, n_classes, strategy, generator=None):
        super().__init__()
        self.body = body
        self.head = new_head(body.output_dim, n_classes, generator)
        self.input_stage = "raw"
        self.use(strategy)

    def use(self, strategy):
        """Train the backbone as ``strategy`` says; return its parameter groups."""
        groups = strategy.apply(self.body)
        if any(p.requires_grad for p in parameters_of(self.body)):
            self.body.source = None  # no longer the weights as loaded
        self._keep_in_eval([self.body.preprocess, *strategy.kept_in_eval(self.body)])
        return groups

    def finish(self, strategy):
        """End training with ``strategy`` (which merges adapters into the weights)."""
        strategy.finish(self.body)
        self._keep_in_eval([self.body.preprocess, *strategy.kept_in_eval(self.body)])

    def _keep_in_eval(self, modules):
        """Keep ``modules`` in eval mode under ``train()``; plan the mode of each module.

        The plan lists every submodule with the mode ``train(True)`` gives it,
        so that the check skorch's ``train()`` on every batch starts with walks
        a flat list (the module tree is walked again where the strategy
        changes it: here).
        """
        self._kept_in_eval = modules
        kept = {id(m) for k in modules for m in submodules(k)}
        below = submodules(self)[1:]
        self._custom_train = not trains_as_module(below)
        trains = [m for m in below if id(m) not in kept]
        self._mode_plan = (trains, [m for m in below if id(m) in kept])
        self.train(self.training)

    def train(self, mode=True):
        """``nn.Module.train``, then the modules the strategy keeps in eval.

        Nothing to do where every module already is in the mode this would
        set and none overrides ``train()`` (skorch calls it on every batch);
        a module that does is always called. Otherwise one flat walk sets
        the modes, where that does the same
        (:func:`~sktransfer._freeze.set_modes`).
        """
        if not isinstance(mode, bool):  # as nn.Module.train, in any mode
            raise ValueError("training mode is expected to be boolean")
        if self._in_mode(mode) or set_modes(self, mode, self._kept_in_eval):
            return self
        super().train(mode)
        if mode:
            for module in self._kept_in_eval:
                module.eval()
        return self

    def _in_mode(self, mode):
        """Whether ``train(mode)`` would change no module's mode and call no
        module's own ``train()``."""
        plan = self.__dict__.get("_mode_plan")
        # (A list of pairs in models pickled by earlier versions: walk the tree.)
        if type(plan) is not tuple or self._custom_train or self.training != mode:
            return False
        trains, kept = plan
        if not mode:
            return not any(map(_training, trains)) and not any(map(_training, kept))
        return all(map(_training, trains)) and not any(map(_training, kept))

    def forward(self, x):
        return self.forward_from(x, self.input_stage)

    def forward_from(self, x, stage):
        """Logits for ``x`` given at ``stage`` (see ``input_stage``)."""
        if stage == "raw":
            features = self.body(x)
        elif stage == "pooled":
            features = x
        else:  # float16 activations from the cache compute in float32 (or autocast)
            # (per-sample ones come float32 from the body's collate)
            x = x.float() if isinstance(x, torch.Tensor) else x
            features = self.body.run_from(x, stage)
        return self.head(features)
