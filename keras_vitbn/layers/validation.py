"""Argument checks shared by layers and models: one clear ValueError each."""


def check_positive(**sizes):
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_rate(**rates):
    for name, value in rates.items():
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_choice(value, argument, choices):
    if value not in choices:
        raise ValueError(f"unknown {argument} {value!r}: choose one of {', '.join(map(str, choices))}")
    return value


def image_hw(image_size):
    """`28` or `(28, 28)` -> (28, 28)."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(image_size)
    if len(image_size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    check_positive(image_height=image_size[0], image_width=image_size[1])
    return image_size
