"""DVC stage prepare: raw corpus -> data/prepared/{train,val,test}.txt + stats.json."""

from collections import Counter

from pipeline.paths import PARAMS, PREPARED

from tinyllm.config import load_params
from tinyllm.corpus import clean_text, load_corpus, split_by_works, split_stats
from tinyllm.errors import exit_on_error
from tinyllm.io import atomic_write_json, atomic_write_text
from tinyllm.logs import setup_logging


def main() -> None:
    setup_logging()
    cfg = load_params(PARAMS).data
    documents = load_corpus(cfg.corpus)
    for doc in documents:
        doc.text = clean_text(doc.text, normalization=cfg.unicode_normalization,
                              drop_stage_directions=cfg.drop_stage_directions,
                              collapse_blank_lines=cfg.collapse_blank_lines)
    texts, works = split_by_works(documents, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    for split, text in texts.items():
        atomic_write_text(PREPARED / f"{split}.txt", text)
    stats = {
        "corpus": cfg.corpus,
        "documents": len(documents),
        "split_by": "works" if len(documents) >= 3 else "contiguous slices",
        "encodings": dict(Counter(doc.encoding for doc in documents)),
        "splits": {split: {**split_stats(text), "works": works[split]}
                   for split, text in texts.items()},
    }
    atomic_write_json(PREPARED / "stats.json", stats)
    sizes = ", ".join(f"{s} {len(t):,}" for s, t in texts.items())
    print(f"prepare: {len(documents)} documents -> {sizes} characters")


if __name__ == "__main__":
    exit_on_error(main)
