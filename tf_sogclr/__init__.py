"""SogCLR self-supervised contrastive learning in TensorFlow 2 / Keras 3."""
