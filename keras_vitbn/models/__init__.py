from keras_vitbn.models.cnn import VGG, AlexNet, ResNet
from keras_vitbn.models.mlp import DNN
from keras_vitbn.models.registry import VARIANTS, create_model, list_models
from keras_vitbn.models.vit import ViT

__all__ = ["AlexNet", "DNN", "ResNet", "VARIANTS", "VGG", "ViT", "create_model", "list_models"]
