"""effnet: fine-tune EfficientNet (and any timm backbone) on a folder of labelled images."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs every command composes (conf/train.yaml, conf/model/b0.yaml, ...), shipped
# inside the package so that an installed effnet-train finds them from any folder.
CONF_DIR = Path(__file__).resolve().parent / "conf"
