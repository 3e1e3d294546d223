"""Score a trained model: top-1/top-5, per-class precision/recall/F1, confusion matrix, mistakes.

python eval.py ckpt=outputs/train/<run>
python eval.py --help
"""

from effnet.cli.commands import evaluate

if __name__ == "__main__":
    evaluate()
