"""DVC stage tokenize: fit the CharTokenizer on train -> models/tokenizer.json + data/tokens/."""

from pipeline.paths import PARAMS, PREPARED, SPLITS, TOKENIZER, TOKENS

from tinyllm.config import load_params
from tinyllm.errors import TinyLLMError, exit_on_error
from tinyllm.io import atomic_write_json
from tinyllm.logs import setup_logging
from tinyllm.tokenizer import CharTokenizer, save_tokens


def read_split(split: str) -> str:
    path = PREPARED / f"{split}.txt"
    if not path.exists():
        raise TinyLLMError(f"{path} not found; run the prepare stage first (dvc repro)")
    return path.read_text(encoding="utf-8")


def main() -> None:
    setup_logging()
    cfg = load_params(PARAMS).tokenizer
    texts = {split: read_split(split) for split in SPLITS}
    tokenizer = CharTokenizer.fit(texts["train"], unknown=cfg.unknown)
    stats = {"vocab_size": tokenizer.vocab_size, "unknown_policy": cfg.unknown, "splits": {}}
    for split, text in texts.items():
        encoded = tokenizer.encode_report(text)
        save_tokens(TOKENS / f"{split}.bin", encoded.ids)
        stats["splits"][split] = {"tokens": int(len(encoded.ids)),
                                  "unknown_characters": sum(encoded.unknown.values()),
                                  "unknown_distinct": "".join(sorted(encoded.unknown))}
    tokenizer.save(TOKENIZER)
    atomic_write_json(TOKENS / "stats.json", stats)
    unknown = {s: v["unknown_characters"] for s, v in stats["splits"].items() if s != "train"}
    print(f"tokenize: vocabulary of {tokenizer.vocab_size} ids; characters outside it: {unknown}")


if __name__ == "__main__":
    exit_on_error(main)
