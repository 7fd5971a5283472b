"""Data augmentation as Keras preprocessing layers that run inside `tf.data` on every backend.

The article (reference implementation, torchvision) trains and tests MNIST with

    RandomRotation(20)                            # degrees, uniform in [-20, 20]
    RandomAffine(degrees=0, translate=(0.2, 0.2))  # shift up to 20% each way
    RandomZoomOut(fill=0, side_range=(2, 3), p=0.2)
    Resize(28)

`augmentation("article")` is that pipeline: Keras' RandomRotation and
RandomTranslation with black (constant 0) fill, since Keras' default is reflect,
and `RandomZoomOut`, written here because Keras' RandomZoom cannot zoom out by
more than 2x.

Layers are chained with `keras.layers.Pipeline`, not `keras.Sequential`: a
Sequential model converts its inputs to backend tensors and fails inside
`tf.data.Dataset.map` on the jax and torch backends; a Pipeline of
`tf.data`-aware layers switches them to the TensorFlow backend there.
"""

import math

import keras

try:  # Keras >= 3.11
    from keras.src.layers.preprocessing.data_layer import DataLayer as _DataLayer
except ImportError:  # older Keras 3
    from keras.src.layers.preprocessing.tf_data_layer import TFDataLayer as _DataLayer

# name -> keyword arguments of `augmentation` that define the policy.
POLICIES = {
    "none": {},
    # The article's MNIST protocol (reference repository, mlflow_modules/train_optimizer.py).
    "article": {"rotation": 20.0, "translation": 0.2, "zoom_out": (2.0, 3.0), "zoom_out_rate": 0.2},
    # A gentler variant, for ablations.
    "light": {"rotation": 10.0, "translation": 0.1, "zoom_out": (1.5, 2.0), "zoom_out_rate": 0.1},
    # The stronger setting the reference repository also tried (train_augs_mnist.py).
    "strong": {"rotation": 60.0, "translation": 0.3, "zoom_out": (1.0, 4.0), "zoom_out_rate": 0.5},
    # Small-ViT CIFAR-10 recipe: horizontal flip + random resized crop.
    "cifar": {"flip": True, "crop": 0.2},
    # The Imagenette walk-through: horizontal flip + random crop (zoom in by up to 1/8, the 224 of 256).
    "imagenette": {"flip": True, "crop": 0.125},
}


@keras.saving.register_keras_serializable(package="keras_vitbn")
class RandomZoomOut(_DataLayer):
    """Zooms out with black fill: shrinks the image by a random factor and places it at random.

    Matches torchvision's `RandomZoomOut(fill, side_range, p)` followed by a
    resize back to the input size: the image is pasted at a uniformly random
    position on a blank canvas `factor` times its size, and the canvas is
    resized to the original size. Each image of a batch draws its own factor,
    position and whether it is zoomed at all. With `antialias=True` the image
    is first low-pass filtered with a triangle filter of the factor's width
    (what a bilinear antialiased resize does), so thin strokes survive the
    shrinking. Works eagerly on every backend and inside `tf.data`.

    Args:
        factor: tuple of 2 floats. Range (lo, hi), 1 <= lo <= hi, of the zoom-out
            factor (2 = the content ends up half as tall and wide). Defaults to (2, 3).
        rate: float. Probability that an image is zoomed out. Defaults to 0.2.
        fill_value: float. Value of the new border. Defaults to 0 (black).
        interpolation: str. "bilinear" or "nearest". Defaults to "bilinear".
        antialias: bool. Low-pass filter before shrinking. Defaults to True.
        seed: int or None. Random seed. Defaults to None.

    Example:
    >>> import numpy as np
    >>> layer = RandomZoomOut(factor=(2.0, 3.0), rate=1.0, seed=0)
    >>> layer(np.ones((2, 28, 28, 1), "float32")).shape
    (2, 28, 28, 1)
    """

    def __init__(
        self,
        factor=(2.0, 3.0),
        rate=0.2,
        fill_value=0.0,
        interpolation="bilinear",
        antialias=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(factor, (int, float)):
            factor = (factor, factor)
        factor = tuple(float(f) for f in factor)
        if len(factor) != 2 or not 1.0 <= factor[0] <= factor[1]:
            raise ValueError(f"zoom-out factor {factor} must be a pair (lo, hi) with 1 <= lo <= hi")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"zoom-out rate {rate} must be a probability in [0, 1]")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation {interpolation!r} must be 'bilinear' or 'nearest'")
        self.factor = factor
        self.rate = float(rate)
        self.fill_value = float(fill_value)
        self.interpolation = interpolation
        self.antialias = bool(antialias)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False

    def _blur(self, images, width):
        """Separable triangle filter of half-width `width` pixels (width 1 = identity)."""
        if width <= 1:
            return images
        taps = [(width - abs(i)) / width**2 for i in range(-(width - 1), width)]  # sums to 1
        channels = images.shape[-1]
        ops = self.backend
        column = ops.numpy.tile(
            ops.numpy.reshape(ops.convert_to_tensor(taps, self.compute_dtype), (-1, 1, 1, 1)),
            (1, 1, channels, 1),
        )
        row = ops.numpy.reshape(column, (1, -1, channels, 1))
        images = ops.nn.depthwise_conv(images, column, 1, padding="same", data_format="channels_last")
        return ops.nn.depthwise_conv(images, row, 1, padding="same", data_format="channels_last")

    def _zoom_out(self, images, chosen, factor, transform):
        """`images` with those at indices `chosen` zoomed out."""
        ops = self.backend
        lo, hi = self.factor
        source = ops.numpy.take(images, chosen, axis=0)
        factor = ops.numpy.take(factor, chosen, axis=0)
        if self.antialias:
            # Blend triangle filters of integer widths with hat weights (they sum to 1).
            unfiltered, source = source, None
            for width_k in range(int(math.floor(lo)), int(math.ceil(hi)) + 1):
                weight = ops.numpy.maximum(0.0, 1.0 - ops.numpy.abs(factor - width_k))
                term = ops.numpy.reshape(ops.cast(weight, self.compute_dtype), (-1, 1, 1, 1))
                term = term * self._blur(unfiltered, width_k)
                source = term if source is None else source + term
        zoomed = ops.image.affine_transform(
            source,
            ops.cast(ops.numpy.take(transform, chosen, axis=0), "float32"),
            interpolation=self.interpolation,
            fill_mode="constant",
            fill_value=self.fill_value,
            data_format="channels_last",
        )
        return ops.core.scatter_update(images, ops.numpy.expand_dims(chosen, -1), zoomed)

    def call(self, inputs, training=True):
        ops = self.backend
        images = ops.cast(inputs, self.compute_dtype)
        if not training or self.rate == 0.0:
            return images
        unbatched = len(images.shape) == 3
        if unbatched:
            images = ops.numpy.expand_dims(images, 0)
        shape = ops.shape(images)
        batch = shape[0]
        height = ops.cast(shape[1], "float32")
        width = ops.cast(shape[2], "float32")
        seed = self._get_seed_generator(ops._backend)
        draws = ops.random.uniform((batch, 4), dtype="float32", seed=seed)
        lo, hi = self.factor
        apply = draws[:, 0] < self.rate
        factor = lo + (hi - lo) * draws[:, 1]
        # Canvas position of the image's top-left corner, in input pixels.
        left = draws[:, 2] * (factor - 1.0) * width
        top = draws[:, 3] * (factor - 1.0) * height
        # Output pixel centre x samples input coordinate factor * (x + 0.5) - left - 0.5.
        zeros = ops.numpy.zeros_like(factor)
        transform = ops.numpy.stack(
            [
                factor,
                zeros,
                0.5 * (factor - 1.0) - left,
                zeros,
                factor,
                0.5 * (factor - 1.0) - top,
                zeros,
                zeros,
            ],
            axis=1,
        )
        # Only the chosen images (a `rate` share) are filtered and resampled; the
        # others pass through. The draws above are made for every image, so the
        # result does not depend on this shortcut.
        chosen = ops.numpy.nonzero(apply)[0]
        count = ops.shape(chosen)[0]  # a tensor when traced (tf.data), where no images is fine
        if isinstance(count, int) and count == 0:  # eager torch cannot resample no images
            outputs = images
        else:
            outputs = self._zoom_out(images, chosen, factor, transform)
        if unbatched:
            outputs = ops.numpy.squeeze(outputs, 0)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "factor": self.factor,
                "rate": self.rate,
                "fill_value": self.fill_value,
                "interpolation": self.interpolation,
                "antialias": self.antialias,
                "seed": self.seed,
            }
        )
        return config


def augmentation(
    policy="article",
    *,
    rotation=None,
    translation=None,
    zoom_out=None,
    zoom_out_rate=None,
    flip=None,
    crop=None,
    fill_value=0.0,
    interpolation="bilinear",
    seed=None,
):
    """Builds an augmentation pipeline by policy name, with optional overrides of its strengths.

    Args:
        policy: str. One of `POLICIES`: "article", "light", "strong", "cifar" or
            "none". Defaults to "article".
        rotation: float or None. Maximum rotation in degrees, either way.
        translation: float or None. Maximum shift as a fraction of height and width.
        zoom_out: tuple of 2 floats or None. Zoom-out factor range.
        zoom_out_rate: float or None. Probability of a zoom-out.
        flip: bool or None. Random horizontal flip.
        crop: float or None. Random resized crop: zoom in by up to this fraction
            per side, then shift by up to half of it (reflect fill).
        fill_value: float. Fill of the geometric transforms. Defaults to 0 (black).
        interpolation: str. "bilinear" or "nearest". Defaults to "bilinear"
            (torchvision's rotation and affine default to nearest).
        seed: int or None. Seed of the first layer; later layers use seed + 1, ...

    Returns:
        `keras.layers.Pipeline`, or None for policy "none" with no overrides.

    Example:
    >>> augment = augmentation("article", seed=0)
    >>> ds = ds.map(lambda x, y: (augment(x, training=True), y))  # batched NHWC float images
    """
    settings = _settings(
        policy,
        rotation=rotation,
        translation=translation,
        zoom_out=zoom_out,
        zoom_out_rate=zoom_out_rate,
        flip=flip,
        crop=crop,
    )
    specs = _layer_specs(settings, fill_value, interpolation)
    if not specs:
        return None
    # Each layer draws from its own seed: seed, seed + 1, ... in the order the layers apply.
    layers = [layer(**kwargs, seed=None if seed is None else int(seed) + i) for i, (layer, kwargs) in enumerate(specs)]
    return keras.layers.Pipeline(layers, name=f"augment_{policy}")


def _settings(policy, **overrides):
    """The policy's settings with the overrides that are not None."""
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation {policy!r}: choose one of {', '.join(POLICIES)}")
    settings = dict(POLICIES[policy])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def _layer_specs(settings, fill_value, interpolation):
    """(layer class, keyword arguments but the seed) of every transform the settings ask for, in order.

    The order is flip, crop, rotation, translation, zoom-out. The crop fills with
    reflection (a crop shows no border); the article's geometric transforms fill
    with `fill_value`, as torchvision does, where Keras would reflect.
    """
    constant = {"fill_mode": "constant", "fill_value": fill_value, "interpolation": interpolation}
    specs = []
    if settings.get("flip"):
        specs.append((keras.layers.RandomFlip, {"mode": "horizontal"}))
    if settings.get("crop"):
        crop = float(settings["crop"])
        reflect = {"fill_mode": "reflect", "interpolation": interpolation}
        specs.append(
            (keras.layers.RandomZoom, {"height_factor": (-crop, 0.0), "width_factor": (-crop, 0.0), **reflect})
        )
        specs.append((keras.layers.RandomTranslation, {"height_factor": crop / 2, "width_factor": crop / 2, **reflect}))
    if settings.get("rotation"):
        turns = float(settings["rotation"]) / 360.0  # Keras counts in turns
        specs.append((keras.layers.RandomRotation, {"factor": turns, **constant}))
    if settings.get("translation"):
        shift = float(settings["translation"])
        specs.append((keras.layers.RandomTranslation, {"height_factor": shift, "width_factor": shift, **constant}))
    if settings.get("zoom_out_rate") and settings.get("zoom_out"):
        zoom_out = {"factor": tuple(settings["zoom_out"]), "rate": float(settings["zoom_out_rate"])}
        specs.append((RandomZoomOut, {**zoom_out, "fill_value": fill_value, "interpolation": interpolation}))
    return specs


def describe(policy="article", **overrides):
    """The resolved settings of a policy as a plain dict (for configs and logs)."""
    return {"policy": policy, **_settings(policy, **overrides)}
