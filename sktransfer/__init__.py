"""Transfer learning as scikit-learn estimators."""

from ._backbones import list_backbones
from ._extractor import PretrainedFeatureExtractor
from ._finetune import FineTunedClassifier

__all__ = ["FineTunedClassifier", "PretrainedFeatureExtractor", "list_backbones"]
__version__ = "0.1.0.dev0"
