"""The README's demo runs end to end (in its quick form) and writes what it says."""

import joblib
import pandas as pd
import pytest
import torch

from sktransfer import datasets, demo

from .conftest import write_fake_fashion_mnist


def _check_outputs(folder, out, sizes, model_file):
    assert "same probabilities: True" in out
    results = pd.read_csv(folder / "results.csv", index_col=0)
    assert list(results.index) == sizes
    assert (folder / "accuracy_vs_examples.png").stat().st_size > 10_000
    model = joblib.load(folder / model_file)
    memories = {k: v for k, v in model.get_params().items() if k.split("__")[-1] == "memory"}
    assert memories and all(v is None for v in memories.values())  # served without a cache
    return model, results


def test_digits_demo_quick(tmp_path, capsys):
    threads = torch.get_num_threads()
    demo.main(["--data", "digits", "--quick", "--output-dir", str(tmp_path), "--n-jobs", "1"])
    assert torch.get_num_threads() == threads
    model, results = _check_outputs(
        tmp_path, capsys.readouterr().out, [3, 5], "finetuned_digits.joblib"
    )
    assert results[["fine-tuned", "frozen + logreg", "scratch"]].gt(0.2).all().all()
    (_, _), (X, y) = demo.load_tasks()
    assert model.score(X, y) > 0.5


def test_fashion_mnist_demo_quick_on_real_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "_DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    write_fake_fashion_mnist(tmp_path)
    out_dir = tmp_path / "out"
    threads = torch.get_num_threads()
    demo.main(["--data-home", str(tmp_path), "--quick", "--output-dir", str(out_dir)])
    assert torch.get_num_threads() == threads  # the user's setting, not the demo's
    out = capsys.readouterr().out
    assert "Fashion-MNIST, EfficientNet-Lite0 (ImageNet)" in out
    model, _ = _check_outputs(out_dir, out, [5], "finetuned_fashion_mnist.joblib")
    finetune = model.named_steps["finetune"]
    assert finetune.backbone == "efficientnet_lite0"
    assert finetune.unfreeze_depth_ in (0, 3)


def test_auto_falls_back_to_digits_without_fashion_mnist(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "_DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    monkeypatch.setattr(demo, "digits_task", lambda: "digits")
    assert demo.load_task("auto", str(tmp_path)) == "digits"
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out


def test_threads_option(capsys):
    assert demo.parse_args(["--threads", "3"]).threads == 3
    assert demo.parse_args([]).threads is None
    with pytest.raises(SystemExit):
        demo.parse_args(["--threads", "0"])
    assert "--threads 0: use 1 or more" in capsys.readouterr().err
