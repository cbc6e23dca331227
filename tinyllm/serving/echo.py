"""Completions' `echo`: the prompt repeated before the reply, and with `logprobs` scored
character by character, which is how evaluation harnesses (lm-evaluation-harness's
local-completions) ask how likely a text is (`echo: true, logprobs: K, max_tokens: 0`).

The scores are the evaluation's own (tinyllm.evaluation.scoring.char_logprobs: the model's
distribution, each character with at least half a context of history), so a text scored here
gets what `tinyllm compare` and the evaluate stage give it. The first character has no history
and no score (null, as OpenAI's)."""

from __future__ import annotations

from tinyllm.evaluation.scoring import char_logprobs


def scored(loaded, prompt: str, top: int) -> dict:
    """The legacy completions' `logprobs` of prompt's characters (a tinyllm.package
    LoadedModel's): each one's log-probability and the `top` most likely at its position."""
    ids = loaded.tokenizer.encode(prompt)
    decode = loaded.tokenizer.decode
    rows = char_logprobs(loaded.model, ids)
    tokens = [decode([int(i)]) for i in ids]
    chosen, tops = [None], [None]
    for row, target in zip(rows, ids[1:], strict=True):
        chosen.append(float(row[int(target)]))
        best = row.topk(min(top, len(row)))
        found = {decode([int(i)]): float(v) for v, i in zip(best.values, best.indices,
                                                             strict=True)}
        found.setdefault(tokens[len(tops)], chosen[-1])
        tops.append(found)
    return {"tokens": tokens, "token_logprobs": chosen[:len(tokens)],
            "top_logprobs": tops[:len(tokens)], "text_offset": list(range(len(tokens)))}


def joined(first: dict, then: dict) -> dict:
    """Two runs of legacy `logprobs` (the prompt's, then the reply's) as one."""
    return {key: first[key] + then[key] for key in first}
