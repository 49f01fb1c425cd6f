"""mtkd: transfer knowledge from one or several pretrained teachers into a small student."""

__version__ = "0.1.0"
