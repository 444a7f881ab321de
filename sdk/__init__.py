"""edgerec.sdk: data, recommendation models, training and metrics (TensorFlow imported lazily)."""
from edgerec.converters.tfenv import prefer_legacy_keras

prefer_legacy_keras()
