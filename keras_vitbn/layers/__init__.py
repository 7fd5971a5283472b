"""The building blocks of ViT, ViTBNFFN and ViTBN (all Keras 3, `keras.ops` only)."""

from keras_vitbn.layers.attention import AttentionBlock
from keras_vitbn.layers.conv_norms import CONV_NORMS, LocalResponseNorm
from keras_vitbn.layers.encoder import Encoder
from keras_vitbn.layers.feed_forward import FFN_NORMS, FeedForward
from keras_vitbn.layers.patch_embedding import PatchEmbedding
from keras_vitbn.layers.pooling import TokenPooling

__all__ = [
    "AttentionBlock",
    "CONV_NORMS",
    "LocalResponseNorm",
    "Encoder",
    "FFN_NORMS",
    "FeedForward",
    "PatchEmbedding",
    "TokenPooling",
]
