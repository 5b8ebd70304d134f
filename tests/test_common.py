"""scikit-learn's estimator checks on both estimators, in a tiny configuration."""

from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor


def _vector_backbone():
    # Lazy first layer: one backbone object serves any number of features.
    return nn.Sequential(
        nn.Sequential(nn.LazyLinear(16), nn.ReLU()),
        nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
    )


ESTIMATORS = [
    FineTunedClassifier(
        backbone=_vector_backbone(),
        weights=None,
        lr=0.02,
        max_epochs=25,
        batch_size=32,
        random_state=0,
    ),
    FineTunedClassifier(
        backbone=_vector_backbone(),
        unfreeze_depth="all",
        lr=0.02,
        backbone_lr=0.01,
        warmup_epochs=2,
        max_epochs=25,
        batch_size=32,
        random_state=0,
    ),
    PretrainedFeatureExtractor(backbone=_vector_backbone(), random_state=0),
]

# joblib.hash of a tensor depends on its memory address, not its content, so a
# deep copy of a module parameter hashes differently: this check cannot pass
# while a parameter holds a torch.nn.Module.
_MODULE_PARAM = "joblib.hash of an nn.Module parameter differs for equal copies"
EXPECTED_FAILED = {"check_estimators_overwrite_params": _MODULE_PARAM}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
