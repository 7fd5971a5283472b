import keras

from keras_vitbn.layers.identity import call_unless_identity, dropout_or_identity
from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.norms import make_norm
from keras_vitbn.layers.validation import check_choice, check_positive, check_rate

# Where each FFN norm choice puts which norm: (before the FFN, on the hidden features).
FFN_NORMS = {
    "layernorm": ("layernorm", "none"),  # standard ViT: LN -> Linear -> GELU -> Linear
    "batchnorm": ("none", "batchnorm"),  # ViTBNFFN: Linear -> BN -> GELU -> Linear
    "pre_batchnorm": ("batchnorm", "none"),  # ViTBN: BatchNorm in the LayerNorm's place
    "none": ("none", "none"),
}


@keras.saving.register_keras_serializable(package="keras_vitbn")
class FeedForward(keras.layers.Layer):
    """Token-wise two-layer MLP with a choice of normalisation, plus a residual.

    `norm` picks the placement (see `FFN_NORMS`):
    `layernorm` = LayerNorm, Dense(mlp_dim), GELU, Dense(dim) (standard pre-norm ViT);
    `batchnorm` = Dense(mlp_dim), BatchNorm, GELU, Dense(dim), with BatchNorm
    statistics over batch and tokens and no norm in front (the article's ViTBNFFN);
    `pre_batchnorm` = BatchNorm in place of the LayerNorm; `none` = no norm.
    GELU is the exact (erf) form, as torch.nn.GELU.

    Args:
        dim: int. Token width (input and output).
        mlp_dim: int. Hidden width.
        norm: str. One of `layernorm`, `batchnorm`, `pre_batchnorm`, `none`. Defaults to `layernorm`.
        dropout: float. Dropout after the activation and after the output. Defaults to 0.

    Example:
    >>> ffn = FeedForward(dim=64, mlp_dim=128, norm="batchnorm")
    >>> ffn(keras.ops.zeros((2, 17, 64))).shape
    (2, 17, 64)
    """

    def __init__(self, dim, mlp_dim, norm="layernorm", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_positive(dim=dim, mlp_dim=mlp_dim)
        check_choice(norm, "ffn norm", tuple(FFN_NORMS))
        check_rate(dropout=dropout)
        self.dim = dim
        self.mlp_dim = mlp_dim
        self.norm = norm
        self.dropout = dropout

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(f"FeedForward(dim={self.dim}) got tokens of width {input_shape[-1]}")
        hidden_shape = (*input_shape[:-1], self.mlp_dim)
        pre, hidden = FFN_NORMS[self.norm]
        dtype = self.dtype_policy
        self.pre_norm = make_norm(pre, layer_name="pre_norm", dtype=dtype)
        self.pre_norm.build(input_shape)
        self.fc1 = torch_dense(self.mlp_dim, self.dim, name="fc1", dtype=dtype)
        self.fc1.build(input_shape)
        self.hidden_norm = make_norm(hidden, layer_name="hidden_norm", dtype=dtype)
        self.hidden_norm.build(hidden_shape)
        self.hidden_dropout = dropout_or_identity(self.dropout, "hidden_dropout", dtype)
        self.fc2 = torch_dense(self.dim, self.mlp_dim, name="fc2", dtype=dtype)
        self.fc2.build(hidden_shape)
        self.out_dropout = dropout_or_identity(self.dropout, "out_dropout", dtype)

    def call(self, x, training=None):
        h = call_unless_identity(self.pre_norm, x, training=training)
        h = self.fc1(h)
        h = call_unless_identity(self.hidden_norm, h, training=training)
        h = keras.activations.gelu(h, approximate=False)
        h = call_unless_identity(self.hidden_dropout, h, training=training)
        return x + call_unless_identity(self.out_dropout, self.fc2(h), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, mlp_dim=self.mlp_dim, norm=self.norm, dropout=self.dropout)
        return config
