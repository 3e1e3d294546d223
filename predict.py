"""Predict classes for image files with a checkpoint or an exported model.

python predict.py ckpt=outputs/train/<run>/export/onnx inputs=~/photos/new topk=3 out=preds.csv
python predict.py --help
"""

from pathlib import Path

from effnet.cli.app import main
from effnet.cli.tasks import predict_task

if __name__ == "__main__":
    main(config_dir=Path(__file__).resolve().parent / "conf", config_name="predict", task=predict_task)
