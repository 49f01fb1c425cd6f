"""Shipping a trained student: ONNX and int8 ONNX files, a timm / Hugging Face folder with its
model card, the Hub, and predictions over many images.

`mtkd export` and `mtkd predict` live here; a study's deliverable (`OUTPUT/model/`) is the
folder `hf.export_folder` writes.
"""
