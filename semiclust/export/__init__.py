"""Exports of a checkpoint's evaluated network: the safetensors file and its metadata (`safetensors`), the
folder timm and the Hugging Face Hub load (`hub`), the classifier as an ONNX graph (`onnx`).

This `__init__` imports nothing, so that `semiclust.export.safetensors` does not import ONNX's module.
"""
