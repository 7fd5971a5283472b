"""Convolutional networks of the BatchNorm story: AlexNet (LRN), VGG, ResNet, with a norm choice."""

from keras_vitbn.models.cnn.alexnet import AlexNet
from keras_vitbn.models.cnn.resnet import ResNet
from keras_vitbn.models.cnn.vgg import VGG

__all__ = ["AlexNet", "ResNet", "VGG"]
