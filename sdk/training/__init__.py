"""edgerec.sdk.training: the shared epoch loop, plain/adversarial/distributed/online training,
evaluation, MODEL_DIR save/load, and `train_and_save` (TensorFlow imported lazily)."""
from .fit import TrainConfig, evaluate, fit, predict_scores
from .job import TrainJob, TrainOutcome, train_and_save
from .loop import EarlyStopping, run_epochs
from .model_dir import load_model_dir, read_manifest, save_model_dir
from .pipeline import train_content_encoder, train_model

__all__ = ["TrainConfig", "fit", "evaluate", "predict_scores", "EarlyStopping", "run_epochs",
           "TrainJob", "TrainOutcome", "train_and_save",
           "save_model_dir", "load_model_dir", "read_manifest", "train_model", "train_content_encoder"]
