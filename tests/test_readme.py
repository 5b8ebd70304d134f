"""The README's example runs as written, and stops at a fit that fails."""

import re
from pathlib import Path
from urllib.error import URLError

import pytest
from torchvision.models import WeightsEnum

from sktransfer import datasets

from .conftest import write_fake_fashion_mnist

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example():
    return re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    """The example's data: 8 training and 2 test images a class, in a fresh folder."""
    write_fake_fashion_mnist(tmp_path)
    monkeypatch.setattr(datasets, "_DEBIAN_FASHION_MNIST", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_example_runs_as_written(fake_fashion_mnist, capsys):
    exec(_readme_example(), {})
    assert "'clf__" in capsys.readouterr().out
    assert (fake_fashion_mnist / "model.joblib").stat().st_size > 1_000_000


def test_readme_search_stops_at_weights_that_cannot_load(fake_fashion_mnist, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    example = _readme_example()
    assert 'backbone="efficientnet_lite0"' in example
    example = example.replace('backbone="efficientnet_lite0"', 'backbone="resnet18"')
    msg = (
        r"Could not obtain the pretrained weights ResNet18_Weights.IMAGENET1K_V1 .*"
        r"weights='/path/to/resnet18-f37072fd.pth'"
    )
    with pytest.raises(RuntimeError, match=msg):
        exec(example, {})
    assert not (fake_fashion_mnist / "model.joblib").exists()
