"""Export a trained model as a verified, measured bundle (ONNX with optional int8, TorchScript, safetensors).

python export.py ckpt=outputs/train/<run> format=onnx quantize=int8
python export.py --help
"""

from pathlib import Path

from effnet.cli.app import main
from effnet.cli.tasks import export_task

if __name__ == "__main__":
    main(config_dir=Path(__file__).resolve().parent / "conf", config_name="export", task=export_task)
