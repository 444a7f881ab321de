"""edgerec.sdk.training: fit with early stopping, evaluation, MODEL_DIR save/load (TensorFlow imported lazily)."""
from .fit import TrainConfig, evaluate, fit, predict_scores
from .model_dir import load_model_dir, read_manifest, save_model_dir
from .pipeline import train_content_encoder, train_model

__all__ = ["TrainConfig", "fit", "evaluate", "predict_scores",
           "save_model_dir", "load_model_dir", "read_manifest", "train_model", "train_content_encoder"]
