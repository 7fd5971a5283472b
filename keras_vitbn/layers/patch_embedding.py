import keras
from keras import ops

from keras_vitbn.layers.identity import call_unless_identity, dropout_or_identity
from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.norms import check_norm, make_norm
from keras_vitbn.layers.validation import check_choice, check_positive, check_rate, image_hw

POSITION_EMBEDDINGS = ("learned", "sincos")


def sincos_position_embedding(num_positions, dim):
    """Fixed 1-D sin-cos position embedding of shape (1, num_positions, dim)."""
    if dim % 2:
        raise ValueError(f"a sincos position embedding needs an even dim, got {dim}")
    position = ops.arange(num_positions, dtype="float32")[:, None]
    omega = 1.0 / (10000.0 ** (ops.arange(dim // 2, dtype="float32") / (dim // 2)))
    angles = position * omega[None, :]
    return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)[None]


@keras.saving.register_keras_serializable(package="keras_vitbn")
class PatchEmbedding(keras.layers.Layer):
    """Image to tokens: patches, norm, linear projection, norm, CLS token, positions.

    Splits an NHWC image into `patch_size` x `patch_size` patches flattened in
    (p1, p2, c) order (as the reference's einops `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`),
    normalises each patch, projects it to `dim`, normalises again, prepends a
    learned CLS token and adds a position embedding.

    Args:
        image_size: int or (int, int). Input height and width.
        patch_size: int. Side of the square patches; must divide the image size.
        dim: int. Token width.
        channels: int. Input channels. Defaults to 1.
        norm: str. `layernorm`, `batchnorm` or `none` for both norms. Defaults to `layernorm`.
        pos_embedding: str. `learned` (N(0, 1) init) or `sincos` (fixed). Defaults to `learned`.
        dropout: float. Dropout on the embedded tokens. Defaults to 0.

    Example:
    >>> layer = PatchEmbedding(image_size=28, patch_size=7, dim=64)
    >>> layer(keras.ops.zeros((2, 28, 28, 1))).shape
    (2, 17, 64)
    """

    def __init__(
        self,
        image_size,
        patch_size,
        dim,
        channels=1,
        norm="layernorm",
        pos_embedding="learned",
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        height, width = image_hw(image_size)
        check_positive(patch_size=patch_size, dim=dim, channels=channels)
        if height % patch_size or width % patch_size:
            raise ValueError(f"image size {height}x{width} is not divisible by patch size {patch_size}")
        check_norm(norm)
        check_choice(pos_embedding, "pos_embedding", POSITION_EMBEDDINGS)
        check_rate(dropout=dropout)
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        self.channels = channels
        self.norm = norm
        self.pos_embedding = pos_embedding
        self.dropout = dropout
        self.grid = (height // patch_size, width // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.patch_dim = patch_size * patch_size * channels

    def check_input_shape(self, input_shape):
        expected = (*image_hw(self.image_size), self.channels)
        got = tuple(input_shape[1:])
        if len(got) != 3 or any(g is not None and g != e for g, e in zip(got, expected)):
            raise ValueError(f"PatchEmbedding expects NHWC images of shape {expected}, got {got}")

    def build(self, input_shape):
        self.check_input_shape(input_shape)
        tokens_shape = (None, self.num_patches, self.patch_dim)
        self.patch_norm = make_norm(self.norm, layer_name="patch_norm", dtype=self.dtype_policy)
        self.patch_norm.build(tokens_shape)
        self.projection = torch_dense(self.dim, self.patch_dim, name="projection", dtype=self.dtype_policy)
        self.projection.build(tokens_shape)
        self.embedding_norm = make_norm(self.norm, layer_name="embedding_norm", dtype=self.dtype_policy)
        self.embedding_norm.build((None, self.num_patches, self.dim))
        self.cls_token = self.add_weight(
            shape=(1, 1, self.dim), initializer=keras.initializers.RandomNormal(stddev=1.0), name="cls_token"
        )
        if self.pos_embedding == "learned":
            self.position_embedding = self.add_weight(
                shape=(1, self.num_patches + 1, self.dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0),
                name="position_embedding",
            )
        else:
            self.position_embedding = sincos_position_embedding(self.num_patches + 1, self.dim)
        self.token_dropout = dropout_or_identity(self.dropout, "token_dropout", self.dtype_policy)

    def patchify(self, images):
        """(B, H, W, C) -> (B, num_patches, p * p * C) in (p1, p2, c) order."""
        p = self.patch_size
        gh, gw = self.grid
        x = ops.reshape(images, (-1, gh, p, gw, p, self.channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, self.num_patches, self.patch_dim))

    def call(self, images, training=None):
        self.check_input_shape(images.shape)  # static shapes: free at trace time
        x = self.patchify(images)
        x = call_unless_identity(self.patch_norm, x, training=training)
        x = self.projection(x)
        x = call_unless_identity(self.embedding_norm, x, training=training)
        cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (ops.shape(x)[0], 1, self.dim))
        x = ops.concatenate([cls, x], axis=1)
        x = x + ops.cast(self.position_embedding, x.dtype)
        return call_unless_identity(self.token_dropout, x, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches + 1, self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            patch_size=self.patch_size,
            dim=self.dim,
            channels=self.channels,
            norm=self.norm,
            pos_embedding=self.pos_embedding,
            dropout=self.dropout,
        )
        return config
