"""Export a trained model as a verified, measured bundle (ONNX with optional int8, TorchScript, safetensors).

python export.py ckpt=outputs/train/<run> format=onnx quantize=int8
python export.py --help
"""

from effnet.cli.commands import export

if __name__ == "__main__":
    export()
