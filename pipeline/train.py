"""DVC stage train: tokens + params (model, train) -> models/model/ and per-step metrics.

Checkpoints live in models/checkpoints/ (persist: true), so an interrupted `dvc repro` resumes.
"""

from pipeline.paths import CHECKPOINTS, MODEL, PARAMS, TOKENIZER, TOKENS, TRAIN_DIR

from tinyllm.config import load_params
from tinyllm.errors import exit_on_error
from tinyllm.io import fingerprint_files
from tinyllm.logs import setup_logging
from tinyllm.model import GPTConfig
from tinyllm.package import save_package
from tinyllm.progress import ProgressReporter
from tinyllm.tokenizer import CharTokenizer, load_tokens
from tinyllm.train import train
from tinyllm.train_outputs import summary_of, write_history


def main() -> None:
    setup_logging()
    params = load_params(PARAMS)
    tokenizer = CharTokenizer.load(TOKENIZER)
    train_tokens = load_tokens(TOKENS / "train.bin", tokenizer)
    val_tokens = load_tokens(TOKENS / "val.bin", tokenizer)
    data_fingerprint = fingerprint_files([TOKENIZER, TOKENS / "train.bin", TOKENS / "val.bin"])
    model_cfg = GPTConfig.from_params(params.model, tokenizer.vocab_size)
    result = train(model_cfg, params.train, train_tokens, val_tokens,
                   checkpoint_dir=CHECKPOINTS, data_fingerprint=data_fingerprint,
                   callbacks=[ProgressReporter(params.train.max_steps)])
    summary = summary_of(result, data_fingerprint)
    write_history(TRAIN_DIR, result.history, summary)
    save_package(MODEL, result.model, tokenizer, meta=summary)
    print(f"train: {result.steps} steps, best val loss {result.best_val_loss:.4f} at step "
          f"{result.best_step}, {summary['tokens_per_sec']:,.0f} tokens/s -> {MODEL}")


if __name__ == "__main__":
    exit_on_error(main)
