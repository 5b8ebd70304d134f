"""Transfer learning as scikit-learn estimators."""

__version__ = "0.1.0.dev0"

from ._cache import clear_cache  # noqa: E402
from ._deploy import SKOPS_TRUSTED_TYPES, load, pip_requirements, save  # noqa: E402
from ._display import TransferCurveDisplay  # noqa: E402
from ._extractor import PretrainedFeatureExtractor  # noqa: E402
from ._finetune import FineTunedClassifier  # noqa: E402
from .backbones import list_backbones  # noqa: E402

__all__ = [
    "SKOPS_TRUSTED_TYPES",
    "FineTunedClassifier",
    "PretrainedFeatureExtractor",
    "TransferCurveDisplay",
    "clear_cache",
    "list_backbones",
    "load",
    "pip_requirements",
    "save",
]
