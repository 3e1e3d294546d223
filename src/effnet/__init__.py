"""effnet: fine-tune EfficientNet (and any timm backbone) on a folder of labelled images."""

__version__ = "0.1.0"
