"""Train on Imagenette (10 ImageNet classes, 224x224) with the walk-through's setup: ResNet34 by default,
AdamW at 1e-4 with weight decay 1e-2, batch 256, 200 epochs, random flip and crop. A GPU job.

    KERAS_BACKEND=jax python trainers/imagenette.py --data-dir /data/imagenette2-320
    python trainers/imagenette.py --data-dir DIR --model resnet34 --set norm=layernorm   # BatchNorm -> LayerNorm
    python trainers/imagenette.py --data-dir DIR --model vit_b16 --set ffn_norm=batchnorm  # ViTBNFFN-B/16
    python trainers/imagenette.py --data-dir DIR --model alexnet      # also vgg16, resnet18, vit_b16
    python trainers/imagenette.py --source tfds                       # tfds' Imagenette (downloads)

DIR holds train/<class>/*.JPEG and val/<class>/*.JPEG (the Imagenette archives' layout); images are
cropped to their central square and resized while reading (`--set image_size=128` for smaller runs).
Every flag: python trainers/imagenette.py --help; the models and anchors: docs/cnn.md.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds tf.data here: hide its C++ chatter

try:
    import keras_vitbn  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_vitbn.training.cli import main  # noqa: E402
from keras_vitbn.training.presets import PRESETS  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(defaults=PRESETS["imagenette"], description=__doc__))
