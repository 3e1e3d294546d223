"""Predict classes for image files with a checkpoint or an exported model.

python predict.py ckpt=outputs/train/<run>/export/onnx inputs=~/photos/new topk=3 out=preds.csv
python predict.py --help
"""

from effnet.cli.commands import predict

if __name__ == "__main__":
    predict()
