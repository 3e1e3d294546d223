"""Fine-tune an EfficientNet on a folder of images.

python train.py data.root=~/photos preset=small gpu=8gb
python train.py --help
"""

from effnet.cli.commands import train

if __name__ == "__main__":
    train()
