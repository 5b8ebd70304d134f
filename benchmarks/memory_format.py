"""Convolutions on a CPU: the channels-last memory format against the default.

For each model and image size, a batch of ``--batch-size`` random images runs
through the network in eval mode without gradients (a frozen forward pass)
and through a training step (forward, a sum as the loss, backward), once in
torch's default layout and once with weights and input in
``torch.channels_last``, alternating, ``--repeats`` times after one warm-up
call each; the speed-up is the ratio of the medians. One torch thread by
default. ``channels_last="auto"``, the default of sktransfer's estimators,
chooses channels-last on a CPU from these figures.

    python benchmarks/memory_format.py [--repeats 5] [--threads 1] [--sizes 64 160]

Prints a table and writes ``memory_format.csv``.
"""

import argparse
import copy
import statistics
import time

import timm
import torch
import torchvision
from _table import print_table, write_csv

MODELS = {
    "efficientnet_lite0": lambda: timm.create_model("tf_efficientnet_lite0"),
    "resnet18": lambda: torchvision.models.resnet18(),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "convnext_atto": lambda: timm.create_model("convnext_atto"),
}


def inference(model, x):
    model.eval()
    with torch.no_grad():
        model(x)


def training_step(model, x):
    model.train()
    model.zero_grad()
    model(x).sum().backward()


def median_times(calls, repeats):
    for fn in calls.values():
        fn()  # first calls allocate and pick kernels
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():  # alternate, so noise hits both alike
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compare(name, size, batch_size, repeats):
    torch.manual_seed(0)
    model = MODELS[name]()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, size, size)
    x_fast = x.contiguous(memory_format=torch.channels_last)
    row = {"model": name, "size": size, "batch_size": batch_size}
    for label, run in (("inference", inference), ("training_step", training_step)):
        times = median_times(
            {"default": lambda: run(model, x), "channels_last": lambda: run(fast, x_fast)},
            repeats,
        )
        row[f"{label}_default_ms"] = round(1000 * times["default"], 1)
        row[f"{label}_channels_last_ms"] = round(1000 * times["channels_last"], 1)
        row[f"{label}_speedup"] = round(times["default"] / times["channels_last"], 2)
    print(row, flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 160])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--csv", default="memory_format.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        compare(name, size, args.batch_size, args.repeats)
        for name in args.models
        for size in args.sizes
    ]
    print_table(rows)
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
