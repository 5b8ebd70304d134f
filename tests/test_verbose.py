"""verbose=0 prints nothing; verbose=1 prints each epoch with its phase."""

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

from .conftest import make_mlp


def test_verbose_0_prints_nothing(vectors, images, capfd):
    X, y = vectors
    FineTunedClassifier(backbone=make_mlp(), unfreeze_depth=2, max_epochs=2).fit(X, y).predict(X)
    PretrainedFeatureExtractor(backbone=make_mlp()).fit(X).transform(X)
    imgs, labels = images
    clf = FineTunedClassifier(backbone="resnet18", weights=None, input_size=20, max_epochs=2)
    clf.fit(imgs, labels).predict(imgs)
    assert capfd.readouterr() == ("", "")


def test_verbose_1_prints_each_epoch_with_its_phase(vectors, capsys):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(), unfreeze_depth=2, max_epochs=3, verbose=1)
    clf.fit(X, y)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "epoch" in line)
    assert "phase" in header and "n_trainable_params" in header
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert [row[2] for row in rows] == ["warmup", "finetune", "finetune"]
    assert rows[0][1] != rows[1][1]  # more parameters train after the warm-up
