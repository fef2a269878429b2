"""Models: the encoders, heads and the two contrastive models on one base.

    contrastive_model   ContrastiveModel: the guarded train step every model shares
    sogclr_model        SogCLRModel: image-image, with a linear head trained alongside
    dual_encoder        DualEncoderModel: image and text towers into one space
    batch_norm          BatchNormalization: fused in training, replica-averaged statistics
    heads               ProjectionHead (SimCLR's)
    resnet              ResNet v1 18-152 encoders
    text                TextTokenizer and TextEncoder
"""

from tf_sogclr.models.contrastive_model import ContrastiveModel, StepTerms
from tf_sogclr.models.dual_encoder import NO_DECAY_PATTERNS, TEMPERATURE_PATTERN, DualEncoderModel
from tf_sogclr.models.heads import PROJECTION_HEAD_MODES, ProjectionHead
from tf_sogclr.models.sogclr_model import LINEAR_HEAD_NAME, NONFINITE_TERMS, SogCLRModel

__all__ = [
    "ContrastiveModel", "StepTerms", "NO_DECAY_PATTERNS", "TEMPERATURE_PATTERN",
    "DualEncoderModel", "PROJECTION_HEAD_MODES", "ProjectionHead", "LINEAR_HEAD_NAME",
    "NONFINITE_TERMS", "SogCLRModel",
]
