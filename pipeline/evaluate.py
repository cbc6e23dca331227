"""DVC stage evaluate: models/model/ -> full-split metrics, fixed-seed samples, loss-curve image."""

from pipeline.paths import EVAL_DIR, MODEL, PARAMS, TOKENS, TRAIN_DIR

from tinyllm.config import load_params
from tinyllm.errors import exit_on_error
from tinyllm.evaluate import split_metrics
from tinyllm.io import atomic_write_json, atomic_write_text
from tinyllm.logs import setup_logging
from tinyllm.package import load_package
from tinyllm.report import loss_curve_png, samples_markdown
from tinyllm.tokenizer import load_tokens


def main() -> None:
    setup_logging()
    cfg = load_params(PARAMS).evaluate
    loaded = load_package(MODEL)
    metrics = {split: split_metrics(loaded.model,
                                    load_tokens(TOKENS / f"{split}.bin", loaded.tokenizer),
                                    cfg.batch_size)
               for split in ("val", "test")}
    settings = cfg.sampling()
    samples = {prompt: loaded.generate(prompt, max_new_tokens=settings.max_new_tokens,
                                       temperature=settings.temperature, top_k=settings.top_k,
                                       top_p=settings.top_p, seed=settings.seed)
               for prompt in cfg.prompts}
    atomic_write_text(EVAL_DIR / "samples.md", samples_markdown(samples, settings))
    loss_curve_png(TRAIN_DIR, EVAL_DIR / "loss_curve.png")
    atomic_write_json(EVAL_DIR / "metrics.json", metrics)
    test = metrics["test"]
    print(f"evaluate: test loss {test['loss']:.4f} nats/char, {test['bits_per_char']:.4f} "
          f"bits/char, perplexity {test['perplexity']:.3f}")


if __name__ == "__main__":
    exit_on_error(main)
