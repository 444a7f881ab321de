"""edgerec.sdk.models: ranking-model families (user_encoder + scorer + fused) and the content encoder.

Importing this package does not import TensorFlow; building a model does.
"""
from .config import FAMILIES, PART_NAMES, ModelConfig, ModelParts
from .content import (attach_text_spec, build_content_encoder, content_table,
                      pretrain_content_encoder, tokenize_items)
from .families import RECURRENT_FAMILIES, ContentParts, build_model

__all__ = ["FAMILIES", "PART_NAMES", "RECURRENT_FAMILIES", "ModelConfig", "ModelParts", "ContentParts",
           "build_model", "attach_text_spec", "build_content_encoder", "content_table", "pretrain_content_encoder",
           "tokenize_items"]
