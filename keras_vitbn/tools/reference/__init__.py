"""Plain-PyTorch re-implementations of the article's reference models (need torch).

`keras_vitbn.tools.reference.torch_vit` loads the published reference checkpoints with
`strict=True`; it is the benchmark's yardstick and the converter's cross-check.
"""
