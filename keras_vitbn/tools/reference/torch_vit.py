"""The article's ViT and ViTBNFFN in plain PyTorch, with the reference checkpoints' key layout.

A re-implementation (not a copy) of the reference repository's models
(BatchNorm_in_Transformers_CV, commit 74212a9), written from the checkpoint key
layout in `shared/data/README.md`, so that

    model = reference_model_for_state_dict(state)
    model.load_state_dict(state, strict=True)

works for both published checkpoints. Two uses:

* the conversion cross-check: the Keras model made by `keras_vitbn.tools.convert`
  and this model, loaded from the same `.pth`, must give the same logits;
* the yardstick of `python -m keras_vitbn.tools.benchmark`: the same model and
  training step written directly in PyTorch, no Keras.

By default the code does what the reference does: einops-style reshapes, a
`b n d -> b d n` transpose around `BatchNorm1d`, and attention written as
matmul + softmax + matmul (`attention="math"`). `attention="sdpa"` and
`bn_transpose=False` give a tuned PyTorch variant with the same numerics.

Conventions (PyTorch's, as the reference): LayerNorm/BatchNorm epsilon 1e-5,
BatchNorm momentum 0.1, exact (erf) GELU, attention scale dim_head ** -0.5,
NCHW input pixels in [0, 1].
"""

import re

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("vit", "vit_bnffn")


class Patchify(nn.Module):
    """(B, C, H, W) -> (B, (H/p)(W/p), p * p * C) in (p1, p2, c) order (einops
    `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`); no weights, so it keeps index 0 of
    `to_patch_embedding`."""

    def __init__(self, patch_size):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # b h w p1 p2 c
        return x.reshape(b, (h // p) * (w // p), p * p * c)


class Attention(nn.Module):
    """Pre-LayerNorm multi-head self-attention (no residual; the Transformer adds it)."""

    def __init__(self, dim, heads, dim_head, dropout, variant, attention="math"):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head**-0.5
        self.attention = attention
        self.norm = nn.LayerNorm(dim)
        qkv = nn.Linear(dim, 3 * inner, bias=False)
        out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        # The two published checkpoints name the same parts differently.
        self.qkv_name, self.out_name = ("to_qkv", "to_out") if variant == "vit" else ("patch_emb", "out_proj")
        setattr(self, self.qkv_name, qkv)
        setattr(self, self.out_name, out)
        self.dropout = dropout

    def forward(self, x):
        b, n, _ = x.shape
        qkv = getattr(self, self.qkv_name)(self.norm(x))
        # b n (3 h d) -> 3 b h n d
        q, k, v = qkv.reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
            )
        else:
            attn = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            attn = F.dropout(attn.softmax(dim=-1), self.dropout, self.training)
            out = torch.matmul(attn, v)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return getattr(self, self.out_name)(out)


class FeedForwardLN(nn.Module):
    """Standard ViT MLP: LayerNorm, Linear, GELU, Dropout, Linear, Dropout (keys net.0 ... net.5)."""

    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class FeedForwardBN(nn.Module):
    """ViTBNFFN MLP: Lin1, BatchNorm over the hidden features (statistics over batch
    and tokens), GELU, Dropout, Lin2."""

    def __init__(self, dim, hidden, dropout, bn_transpose=True):
        super().__init__()
        self.Lin1 = nn.Linear(dim, hidden)
        self.BN = nn.BatchNorm1d(hidden)
        self.drop = nn.Dropout(dropout)
        self.Lin2 = nn.Linear(hidden, dim)
        self.bn_transpose = bn_transpose

    def forward(self, x):
        h = self.Lin1(x)
        if self.bn_transpose:  # the reference: b n d -> b d n, BatchNorm1d, back
            h = self.BN(h.transpose(1, 2)).transpose(1, 2)
        else:  # same statistics, no transpose: (b n) d
            b, n, d = h.shape
            h = self.BN(h.reshape(b * n, d)).reshape(b, n, d)
        return self.Lin2(self.drop(F.gelu(h)))


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout, variant, attention, bn_transpose):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        feed_forward = (
            (lambda: FeedForwardLN(dim, mlp_dim, dropout))
            if variant == "vit"
            else (lambda: FeedForwardBN(dim, mlp_dim, dropout, bn_transpose))
        )
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, dropout, variant, attention), feed_forward()])
            for _ in range(depth)
        )

    def forward(self, x):
        for attention, feed_forward in self.layers:
            x = attention(x) + x
            x = feed_forward(x) + x
        return self.norm(x)


class ReferenceViT(nn.Module):
    """The reference ViT (`variant="vit"`) or ViTBNFFN (`variant="vit_bnffn"`).

    Args:
        variant: str. "vit" or "vit_bnffn".
        depth: int. Encoder blocks.
        image_size, patch_size, channels, num_classes, dim, heads, dim_head, mlp_dim:
            the article's MNIST defaults 28, 7, 1, 10, 64, 8, 64, 128.
        pool: str. "cls" or "mean". Defaults to "cls".
        dropout, emb_dropout: float. Defaults to 0.
        attention: str. "math" (the reference's matmul-softmax-matmul) or "sdpa"
            (`F.scaled_dot_product_attention`). Defaults to "math".
        bn_transpose: bool. Transpose around BatchNorm1d as the reference does.
            Defaults to True.

    Example:
    >>> model = ReferenceViT("vit_bnffn", depth=5)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        variant,
        depth,
        image_size=28,
        patch_size=7,
        channels=1,
        num_classes=10,
        dim=64,
        heads=8,
        dim_head=64,
        mlp_dim=128,
        pool="cls",
        dropout=0.0,
        emb_dropout=0.0,
        attention="math",
        bn_transpose=True,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown reference variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        if attention not in ("math", "sdpa"):
            raise ValueError(f"attention {attention!r} must be 'math' or 'sdpa'")
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}")
        num_patches = (image_size // patch_size) ** 2
        patch_dim = patch_size * patch_size * channels
        self.variant, self.pool = variant, pool
        self.to_patch_embedding = nn.Sequential(
            Patchify(patch_size), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim)
        )
        self.position_name = "pos_embedding" if variant == "vit" else "pos_embedding_random"
        setattr(self, self.position_name, nn.Parameter(torch.randn(1, num_patches + 1, dim)))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, variant, attention, bn_transpose)
        self.head_name = "mlp_head" if variant == "vit" else "linear_head"
        setattr(self, self.head_name, nn.Linear(dim, num_classes))

    def forward(self, images):
        x = self.to_patch_embedding(images)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + getattr(self, self.position_name)
        x = self.transformer(self.dropout(x))
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return getattr(self, self.head_name)(x)


def architecture_of(state):
    """(variant, keyword arguments) of `ReferenceViT` for a reference state dict."""
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k)))
    dim, patch_dim = state["to_patch_embedding.2.weight"].shape
    variant = "vit_bnffn" if "transformer.layers.0.1.BN.weight" in state else "vit"
    position = state["pos_embedding" if variant == "vit" else "pos_embedding_random"]
    grid = int(round((position.shape[1] - 1) ** 0.5))
    channels = 3 if patch_dim % 3 == 0 and int(round((patch_dim // 3) ** 0.5)) ** 2 == patch_dim // 3 else 1
    patch_size = int(round((patch_dim // channels) ** 0.5))
    hidden = state[
        "transformer.layers.0.1.BN.weight" if variant == "vit_bnffn" else "transformer.layers.0.1.net.1.weight"
    ]
    return variant, {
        "depth": depth,
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "channels": channels,
        "num_classes": state[("mlp_head" if variant == "vit" else "linear_head") + ".weight"].shape[0],
        "dim": int(dim),
        "mlp_dim": int(hidden.shape[0]),
    }


def load_reference(path, heads=8, **options):
    """Builds the `ReferenceViT` of a reference `.pth` and loads it with strict=True (eval mode)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    variant, arguments = architecture_of(state)
    inner = (
        state[next(k for k in state if k.endswith("0.0.to_qkv.weight") or k.endswith("0.0.patch_emb.weight"))].shape[0]
        // 3
    )
    model = ReferenceViT(variant, heads=heads, dim_head=inner // heads, **arguments, **options)
    model.load_state_dict(state, strict=True)
    return model.eval()
