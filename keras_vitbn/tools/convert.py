"""Import the reference implementation's PyTorch checkpoints into Keras.

    python -m keras_vitbn.tools.convert IN.pth OUT.keras [--heads 8]

The architecture (variant, depth, sizes) is read off the state dict's keys and
shapes; only the head count is not recoverable from shapes (q/k/v are fused to
3 x heads x dim_head), so it defaults to the article's 8. Every weight is copied,
BatchNorm running statistics included, and every key must be used exactly once.
Converting needs torch; the `.keras` file it writes does not.
"""

import math
import os
import re
import sys

from keras_vitbn.models import create_model
from keras_vitbn.utils import files
from keras_vitbn.utils.cli_errors import ArgumentParser, command

# Reference key names per part; the two published checkpoints name a few parts differently.
QKV_KEYS = ("to_qkv.weight", "patch_emb.weight")
OUT_KEYS = ("to_out.0", "out_proj.0")
POSITION_KEYS = ("pos_embedding", "pos_embedding_random")
HEAD_KEYS = ("mlp_head", "linear_head")


class CheckpointError(ValueError):
    """The file is not a reference checkpoint this converter understands."""


def load_state_dict(path):
    """Reads a PyTorch state dict into {key: numpy array} (needs torch)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        import torch
    except ImportError:
        raise CheckpointError("converting a .pth file needs PyTorch: pip install 'keras_vitbn[torch]'") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {key: value.detach().cpu().numpy() for key, value in state.items()}


def _first(state, candidates, suffix=""):
    for name in candidates:
        if name + suffix in state:
            return name
    raise CheckpointError(f"no key among {[c + suffix for c in candidates]}: not a reference ViT checkpoint")


def infer_architecture(state, heads=8, channels=None):
    """Returns the `create_model` name and arguments that match a reference state dict."""
    if "cls_token" not in state or "to_patch_embedding.2.weight" not in state:
        raise CheckpointError("missing cls_token / to_patch_embedding: not a reference ViT checkpoint")
    depths = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    if not depths or depths != set(range(max(depths) + 1)):
        raise CheckpointError(f"transformer layer indices {sorted(depths)} are not 0..depth-1")
    depth = len(depths)
    dim, patch_dim = state["to_patch_embedding.2.weight"].shape
    if channels is None:  # p * p * c = patch_dim; prefer RGB when it fits a square patch
        fits = [c for c in (3, 1) if patch_dim % c == 0 and math.isqrt(patch_dim // c) ** 2 == patch_dim // c]
        if not fits:
            raise CheckpointError(f"patch width {patch_dim} is not p*p*channels; pass channels")
        channels = fits[0]
    patch_size = math.isqrt(patch_dim // channels)
    num_patches = state[_first(state, POSITION_KEYS)].shape[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise CheckpointError(f"{num_patches} patches do not form a square image")
    block0 = "transformer.layers.0.0."
    inner_dim = state[_first(state, [block0 + k for k in QKV_KEYS])].shape[0] // 3
    if inner_dim % heads:
        raise CheckpointError(f"inner attention width {inner_dim} is not divisible by heads={heads}")
    if "transformer.layers.0.1.BN.weight" in state:
        variant, mlp_dim = "vit_bnffn", state["transformer.layers.0.1.Lin1.weight"].shape[0]
    elif "transformer.layers.0.1.net.0.weight" in state:
        variant, mlp_dim = "vit", state["transformer.layers.0.1.net.1.weight"].shape[0]
    else:
        raise CheckpointError("feed-forward keys are neither ViT (net.*) nor ViTBNFFN (Lin1/BN/Lin2)")
    head = _first(state, HEAD_KEYS, ".weight")
    return variant, {
        "depth": depth,
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "channels": channels,
        "num_classes": state[head + ".weight"].shape[0],
        "dim": int(dim),
        "heads": heads,
        "dim_head": inner_dim // heads,
        "mlp_dim": int(mlp_dim),
    }


def weight_map(state, variant, depth):
    """{Keras weight path: (reference key, transpose?)} for every Keras weight."""
    linear = lambda keras_name, torch_name: {  # noqa: E731
        f"{keras_name}/kernel": (f"{torch_name}.weight", True),
        f"{keras_name}/bias": (f"{torch_name}.bias", False),
    }
    norm = lambda keras_name, torch_name: {  # noqa: E731
        f"{keras_name}/gamma": (f"{torch_name}.weight", False),
        f"{keras_name}/beta": (f"{torch_name}.bias", False),
    }
    mapping = {
        "patch_embedding/cls_token": ("cls_token", False),
        "patch_embedding/position_embedding": (_first(state, POSITION_KEYS), False),
        **norm("patch_embedding/patch_norm", "to_patch_embedding.1"),
        **linear("patch_embedding/projection", "to_patch_embedding.2"),
        **norm("patch_embedding/embedding_norm", "to_patch_embedding.3"),
        **norm("encoder/final_norm", "transformer.norm"),
        **linear("head", _first(state, HEAD_KEYS, ".weight")),
    }
    for i in range(depth):
        attention, ffn = f"transformer.layers.{i}.0", f"transformer.layers.{i}.1"
        block = f"encoder/block{i}"
        qkv = _first(state, [f"{attention}.{k}" for k in QKV_KEYS])
        out = _first(state, [f"{attention}.{k}" for k in OUT_KEYS], ".weight")
        mapping.update(norm(f"{block}_attention/norm", f"{attention}.norm"))
        mapping[f"{block}_attention/qkv/kernel"] = (qkv, True)
        mapping.update(linear(f"{block}_attention/out", out))
        if variant == "vit":
            mapping.update(norm(f"{block}_ffn/pre_norm", f"{ffn}.net.0"))
            mapping.update(linear(f"{block}_ffn/fc1", f"{ffn}.net.1"))
            mapping.update(linear(f"{block}_ffn/fc2", f"{ffn}.net.4"))
        else:
            mapping.update(linear(f"{block}_ffn/fc1", f"{ffn}.Lin1"))
            mapping.update(norm(f"{block}_ffn/hidden_norm", f"{ffn}.BN"))
            mapping[f"{block}_ffn/hidden_norm/moving_mean"] = (f"{ffn}.BN.running_mean", False)
            mapping[f"{block}_ffn/hidden_norm/moving_variance"] = (f"{ffn}.BN.running_var", False)
            mapping.update(linear(f"{block}_ffn/fc2", f"{ffn}.Lin2"))
    return mapping


def convert_state_dict(state, heads=8, channels=None):
    """Builds the Keras model for a reference state dict and copies every weight into it."""
    variant, arguments = infer_architecture(state, heads=heads, channels=channels)
    model = create_model(variant, **arguments)
    mapping = weight_map(state, variant, arguments["depth"])
    used = set()
    for weight in model.weights:
        if weight.path not in mapping:
            raise CheckpointError(f"no reference weight for Keras weight {weight.path}")
        key, transpose = mapping[weight.path]
        if key not in state:
            raise CheckpointError(f"checkpoint lacks {key} (for {weight.path})")
        value = state[key].T if transpose else state[key]
        if tuple(value.shape) != tuple(weight.shape):
            raise CheckpointError(f"{key} has shape {value.shape}, {weight.path} needs {tuple(weight.shape)}")
        weight.assign(value.astype("float32"))
        used.add(key)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise CheckpointError(f"checkpoint keys not understood: {', '.join(unused[:5])}")
    return model


def convert_checkpoint(checkpoint_path, output_path, heads=8, channels=None):
    """Converts a reference `.pth` into a `.keras` file; returns the Keras model."""
    if not str(output_path).endswith(".keras"):
        raise CheckpointError(f"output {output_path} must end in .keras")
    directory = os.path.dirname(os.path.abspath(output_path))
    try:  # before converting: a bad output path fails at once
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the folder of {output_path}: {error.strerror}") from None
    files.check_writable(output_path, "output")
    model = convert_state_dict(load_state_dict(checkpoint_path), heads=heads, channels=channels)
    files.save_model(model, output_path)
    return model


@command
def main(argv=None):
    parser = ArgumentParser(
        prog="python -m keras_vitbn.tools.convert",
        description="Convert a reference PyTorch ViT/ViTBNFFN checkpoint into a .keras model.",
    )
    parser.add_argument("checkpoint", help="input .pth state dict")
    parser.add_argument("output", help="output .keras file")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (not recoverable from shapes; default 8)")
    parser.add_argument("--channels", type=int, default=None, help="input channels (default: inferred)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    args = parser.parse_args(argv)
    if os.path.exists(args.output) and not args.force:
        parser.exit(2, f"error: {args.output} exists; pass --force to overwrite it\n")
    try:
        model = convert_checkpoint(args.checkpoint, args.output, heads=args.heads, channels=args.channels)
    except (CheckpointError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.output}: {model.name}, depth {model.depth}, {model.count_params():,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
