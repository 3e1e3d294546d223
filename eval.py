"""Score a trained model: top-1/top-5, per-class precision/recall/F1, confusion matrix, mistakes.

python eval.py ckpt=outputs/train/<run>
python eval.py --help
"""

from pathlib import Path

from effnet.cli.app import main
from effnet.cli.tasks import eval_task

if __name__ == "__main__":
    main(config_dir=Path(__file__).resolve().parent / "conf", config_name="eval", task=eval_task)
