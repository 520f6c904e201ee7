"""Models: loading pipelines from a spec, cross-attention discovery and batched sampling.

Why one package: every method, attack and evaluation goes through these few functions, so SD1.x,
SD2.x, SDXL and the embedded shapes pipeline look the same to the rest of erasurelab.
"""

from erasurelab.models.layers import CrossAttentionLayer, cross_attention_layers, projection_weights
from erasurelab.models.loading import check_safetensors, is_sdxl_checkpoint, load_pipeline
from erasurelab.models.sampling import default_sampling, generate

__all__ = [
    "CrossAttentionLayer",
    "check_safetensors",
    "cross_attention_layers",
    "default_sampling",
    "generate",
    "is_sdxl_checkpoint",
    "load_pipeline",
    "projection_weights",
]
