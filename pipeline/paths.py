"""Where each stage reads and writes; dvc.yaml declares the same paths as deps and outs."""

from pathlib import Path

PARAMS = Path("params.yaml")
PREPARED = Path("data/prepared")
TOKENS = Path("data/tokens")
TOKENIZER = Path("models/tokenizer.json")
MODEL = Path("models/model")
CHECKPOINTS = Path("models/checkpoints")
TRAIN_DIR = Path("models/train")  # per-step metrics, run summary, MLflow run id
EVAL_DIR = Path("models/eval")
SPLITS = ("train", "val", "test")
