"""edgerec.sdk.data: data sources (synthetic, MovieLens) and the next-item CTR dataset builder."""
from .builder import build_dataset, load_dataset
from .dataset import RecDataset, Split
from .log import DataError, InteractionLog, ItemsTable

__all__ = ["load_dataset", "build_dataset", "RecDataset", "Split", "DataError", "InteractionLog", "ItemsTable"]
