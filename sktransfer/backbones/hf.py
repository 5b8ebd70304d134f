"""Hugging Face text encoders as ``"hf:<model name or local folder>"``, through transformers.

Blocks: the embeddings, then each transformer layer in order (a 6-layer
MiniLM has 7 blocks), so ``unfreeze_depth`` counts layers from the top. A
block takes and returns ``(hidden_states, attention_mask)``: the 2-D mask of
the padded batch travels with the hidden states, and each layer is called
with the attention mask the model itself would build from it. :data:`LAYOUTS`
says where the embeddings and the layers of each architecture it splits are
(by ``config.model_type``); other architectures are refused by name.

Tokenisation is the model's own tokenizer: truncation at the estimator's
``max_length`` tokens (by default the ``max_seq_length`` of the folder's
``sentence_bert_config.json``, else the model's own limit, capped at 256; at
most the model's position embeddings), each batch padded to its longest
text. The tokenizer's files and ``max_length`` are part of the cache keys.

The frozen-feature cache keeps each sample's hidden states at its own
tokens (:class:`TextActivations`) and pads them again per batch.

Pooling follows the checkpoint's sentence-transformers configuration: the
``1_Pooling/config.json`` named by ``modules.json`` says mean over the
attention mask or the CLS token, and a ``Normalize`` module in
``modules.json`` L2-normalises the result (what ``SentenceTransformer.encode``
gives). Without that configuration: mean pooling, not normalised.

Weights: ``"DEFAULT"`` is the checkpoint's pretrained weights
(``AutoModel.from_pretrained``, from a local folder, or from the hub when it
is reachable); None the same configuration randomly initialised as
transformers does it (``AutoModel.from_config``), tokenizer kept; a path to a
state-dict file of that ``AutoModel``.
"""

import glob
import inspect
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from .._input import file_stamp
from .._modules import TextPreprocess
from ._common import BackboneSpec, Weights, checkpoint_weights

PREFIX = "hf:"
INPUT_KIND = "text"
MAX_LENGTH = 256  # the cap on a model's own limit of tokens per text


def _transformers(name):
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            f'backbone={name!r} needs transformers; install it with pip install "sktransfer[text]".'
        ) from exc
    return transformers


def _from_hub(name, source, load):
    """``load(source)``; an error that says to pass a local folder when it fails.

    transformers' own progress bars stay off while it loads: the estimators'
    ``verbose`` decides what is printed.
    """
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(source)
    except (OSError, ValueError) as exc:
        if os.path.isdir(source):
            raise ValueError(
                f"backbone={name!r}: the folder {source!r} is not a transformers model "
                f"folder ({type(exc).__name__}: {exc})."
            ) from exc
        if not isinstance(exc, OSError):
            raise
        raise RuntimeError(
            f"backbone={name!r}: could not obtain the model {source!r} from the Hugging "
            f"Face hub ({type(exc).__name__}: {exc}). Without internet access, download it "
            f"elsewhere (huggingface-cli download {source} --local-dir DIR) and pass the "
            f"local folder instead: backbone='hf:/path/to/DIR'."
        ) from exc
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _config_file(source, filename):
    """Path of ``filename`` of the checkpoint, or None where it has none."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(source, filename)
    except Exception:  # no such file in the repository, or the hub unreachable
        return None


def _read_json(source, filename):
    path = _config_file(source, filename)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def pooling_config(name, source):
    """``(mode, normalize)`` from the checkpoint's sentence-transformers files.

    ``mode`` is ``"mean"`` or ``"cls"``; without those files ``("mean", False)``.
    """
    modules = _read_json(source, "modules.json") or []
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    normalize = "Normalize" in kinds
    if "Pooling" not in kinds:
        return "mean", normalize
    pooling = _read_json(source, os.path.join(kinds["Pooling"].get("path", ""), "config.json"))
    if pooling is None:
        return "mean", normalize
    prefix = "pooling_mode_"
    modes = [k[len(prefix) :] for k, on in pooling.items() if k.startswith(prefix) and on]
    if modes == ["mean_tokens"]:
        return "mean", normalize
    if modes == ["cls_token"]:
        return "cls", normalize
    raise ValueError(
        f"backbone={name!r}: its sentence-transformers pooling is {modes}; sktransfer "
        f"pools text by the mean over tokens or by the CLS token only."
    )


def _max_length(source, tokenizer, config):
    """The model's own limit of tokens per text, capped at :data:`MAX_LENGTH`."""
    st_config = _read_json(source, "sentence_bert_config.json") or {}
    limits = [
        st_config.get("max_seq_length"),
        getattr(tokenizer, "model_max_length", None),
        getattr(config, "max_position_embeddings", None),
        MAX_LENGTH,
    ]
    return min(int(n) for n in limits if isinstance(n, int) and n > 0)


# --- Blocks -----------------------------------------------------------------------


def _attention_mask(config, hidden, mask):
    """The attention mask the model builds from the 2-D ``mask`` of a padded batch."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers < 4.53: the additive extended mask
        extended = mask[:, None, None, :].to(hidden.dtype)
        return (1.0 - extended) * torch.finfo(hidden.dtype).min
    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)


class TextEmbeddings(nn.Module):
    """The model's ``embeddings``: ``(input_ids, mask)`` to ``(hidden_states, mask)``."""

    def __init__(self, embeddings):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, x):
        input_ids, mask = x
        return self.embeddings(input_ids=input_ids), mask


class TextLayer(nn.Module):
    """One layer of the encoder: ``(hidden_states, mask)`` to ``(hidden_states, mask)``.

    The layer gets the attention mask the model would give it for ``mask``.
    """

    def __init__(self, layer, config):
        super().__init__()
        self.layer = layer
        self.config = config

    def forward(self, x):
        hidden, mask = x
        out = self.layer(hidden, attention_mask=_attention_mask(self.config, hidden, mask))
        return (out[0] if isinstance(out, tuple) else out), mask


class TextPool(nn.Module):
    """``(hidden_states, mask)`` to ``(n, d)``: the mean over the mask or the CLS
    token, L2-normalised where ``normalize``."""

    def __init__(self, mode="mean", normalize=False):
        super().__init__()
        self.mode = mode
        self.normalize = normalize

    def forward(self, x):
        hidden, mask = x
        if self.mode == "cls":
            pooled = hidden[:, 0]
        else:  # as sentence-transformers' Pooling computes it
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            counts = torch.clamp(weights.sum(dim=1), min=1e-9)
            pooled = (hidden * weights).sum(dim=1) / counts
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    def extra_repr(self):
        return f"mode={self.mode!r}, normalize={self.normalize}"


class TextActivations:
    """How the frozen-feature cache keeps ``(hidden_states, mask)`` between blocks.

    Texts in a batch are padded to the longest, so the activations have one
    length per batch: :meth:`split` keeps each sample's hidden states at its
    own tokens (memory as its own length), :meth:`collate` pads a batch of
    them again, to its longest, with the mask. Tokenizers of BERT-like
    encoders pad on the right, so a sample's tokens keep their positions and
    the blocks above compute what they compute from the tokens.
    """

    def split(self, activations, dtype):
        """One batch as a list of ``(n_tokens, d)`` arrays of ``dtype``."""
        hidden, mask = activations
        hidden, mask = hidden.to(dtype).cpu(), mask.bool().cpu()
        return [h[m].numpy() for h, m in zip(hidden, mask)]

    def collate(self, items):
        """``(hidden_states, mask)`` of a batch of :meth:`split`'s arrays, float32."""
        lengths = [len(x) for x in items]
        hidden = torch.zeros(len(items), max(lengths), items[0].shape[-1])
        mask = torch.zeros(len(items), max(lengths), dtype=torch.long)
        for i, (x, n) in enumerate(zip(items, lengths)):
            hidden[i, :n] = torch.from_numpy(x)
            mask[i, :n] = 1
        return hidden, mask


# The encoders sktransfer splits, by ``config.model_type``: the paths of their
# embeddings and of their list of layers. Each layer is called as
# ``layer(hidden_states, attention_mask=...)``. Encoders that compute something
# between the layers (MPNet's relative position bias, ELECTRA's projection of
# the embeddings) cannot be split this way and are not listed.
LAYOUTS = {
    "bert": ("embeddings", "encoder.layer"),
    "roberta": ("embeddings", "encoder.layer"),
    "xlm-roberta": ("embeddings", "encoder.layer"),
    "distilbert": ("embeddings", "transformer.layer"),
}


def _blocks(model, name):
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LAYOUTS:
        raise ValueError(
            f"backbone={name!r} is a {type(model).__name__} (model_type={model_type!r}); "
            f"sktransfer splits text encoders of these architectures (model_type): "
            f"{', '.join(sorted(LAYOUTS))}."
        )
    if getattr(model.config, "is_decoder", False):
        raise ValueError(f"backbone={name!r} is a decoder; sktransfer takes text encoders.")
    embeddings, layers = (model.get_submodule(path) for path in LAYOUTS[model_type])
    if any("attention_mask" not in inspect.signature(x.forward).parameters for x in layers[:1]):
        import transformers

        raise ValueError(
            f"backbone={name!r}: the layers of {type(model).__name__} in transformers "
            f"{transformers.__version__} take no attention_mask argument; sktransfer splits "
            f"it with a newer transformers (pip install -U transformers)."
        )
    return [TextEmbeddings(embeddings), *(TextLayer(layer, model.config) for layer in layers)]


# --- Weights, tokenizer, spec --------------------------------------------------------


def _files_stamp(folder, patterns):
    """The files of ``folder`` matching ``patterns`` as they are now, for cache keys."""
    files = sorted({f for p in patterns for f in glob.glob(os.path.join(folder, p))})
    return ("folder", os.path.abspath(folder), tuple(file_stamp(f) for f in files))


def _folder_stamp(folder):
    """The folder's weights and config files as they are now, for cache keys."""
    return _files_stamp(folder, ("*.safetensors", "*.bin", "config.json"))


def _resolve_weights(name, source, weights):
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "DEFAULT":
        transformers = _transformers(name)

        def load():
            model = _from_hub(name, source, transformers.AutoModel.from_pretrained)
            return model.state_dict()

        stamp = _folder_stamp(source) if os.path.isdir(source) else ("hub", source)
        return Weights(source=stamp, load=load)
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return checkpoint_weights(os.fspath(weights))
    raise ValueError(
        f"weights={weights!r} is not valid for backbone={name!r}; use 'DEFAULT' (the "
        f"checkpoint's pretrained weights), None (randomly initialised), or the path of "
        f"a state-dict file of its transformers AutoModel."
    )


def _build_model(name, source):
    transformers = _transformers(name)
    config = _from_hub(name, source, transformers.AutoConfig.from_pretrained)
    return transformers.AutoModel.from_config(config)


# The files a tokenizer is read from, in the folders transformers writes.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",  # sentencepiece
)


def _tokenizer_stamp(source):
    """The tokenizer's files as they are now (a folder), or the hub name, for cache keys."""
    if not os.path.isdir(source):
        return ("hub", source)
    return _files_stamp(source, TOKENIZER_FILES)


def _check_max_length(name, max_length, config):
    """``max_length`` tokens must fit the model's position embeddings."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ValueError(
            f"max_length={max_length}, but backbone={name!r} has position embeddings for "
            f"{limit} tokens; use 1..{limit} or None (the model's own limit, at most "
            f"{MAX_LENGTH})."
        )


def _preprocessing(name, source, model, max_length=None):
    transformers = _transformers(name)
    if max_length is not None:
        _check_max_length(name, max_length, model.config)
    tokenizer = _from_hub(name, source, transformers.AutoTokenizer.from_pretrained)
    if max_length is None:
        max_length = _max_length(source, tokenizer, model.config)
    return TextPreprocess(tokenizer, max_length, source, _tokenizer_stamp(source))


def names():
    """No listed names: any model is ``"hf:<model name or local folder>"``."""
    return []


def spec(name):
    """The :class:`BackboneSpec` of ``"hf:<model name or folder>"``, None for other names."""
    if not (isinstance(name, str) and name.startswith(PREFIX)):
        return None
    source = name[len(PREFIX) :]
    if not source:
        raise ValueError(
            f"backbone={name!r} names no model; use 'hf:<model name or local folder>'."
        )
    return BackboneSpec(
        name=name,
        input_kind=INPUT_KIND,
        build_model=lambda: _build_model(name, source),
        blocks=lambda model: _blocks(model, name),
        head_prefixes=("pooler.",),  # BERT's pooler is not used: the pooling is ours
        resolve_weights=lambda weights: _resolve_weights(name, source, weights),
        preprocessing=lambda model, resolved, max_length: _preprocessing(
            name, source, model, max_length
        ),
        pool=lambda model: TextPool(*pooling_config(name, source)),
        activations=TextActivations(),
    )
