"""Fine-tune an EfficientNet on a folder of images.

python train.py data.root=~/photos preset=small gpu=8gb
python train.py --help
"""

from pathlib import Path

from effnet.cli.app import main

if __name__ == "__main__":
    main(config_dir=Path(__file__).resolve().parent / "conf", config_name="train")
