"""vLLM's tokenizer routes: POST /tokenize, POST /detokenize and GET /tokenizer_info.

lm-evaluation-harness's `local-completions` model needs a tokenizer to count a text's tokens
before it asks for their log-probabilities (loglikelihood tasks), and finds these routes on its
own (its "remote" tokenizer backend). This model's tokens are its characters, so the ids are
the CharTokenizer's. Its `bos_token` is the character a text starts after (generate.TEXT_START):
the harness scores a text's first character after it, as generation starts an empty prompt
from it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI
from pydantic import Field

from tinyllm.generate import TEXT_START
from tinyllm.serving.requests import MODEL_FIELD, Integer, RequestError, _Strict
from tinyllm.tokenizer import FORMAT, UNKNOWN_TEXT

MODEL = Field(None, description=f"{MODEL_FIELD} Omitted or null: the model served.")


class TokenizeRequest(_Strict):
    model: str | None = MODEL
    prompt: str = Field(description="The text.")
    add_special_tokens: bool | None = Field(False, description=(
        "Accepted; nothing is added either way (a character model has no special tokens)."))


class DetokenizeRequest(_Strict):
    model: str | None = MODEL
    tokens: list[Annotated[Integer, Field(ge=0)]] = Field(description=(
        "Ids as /tokenize gives them, each below the model's vocabulary size."))


def install(app: FastAPI, generation) -> None:
    """The three routes, over the model of generation (app.Generation: the model served and
    the prompt-length cap, which bounds both texts and id lists)."""

    async def served(name: str | None):
        return generation.model.current if name is None else await generation.model.served(name)

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        """The tokenizer of the model served: bos_token is what a text starts after."""
        loaded = generation.model.current.loaded
        return {"tokenizer_class": FORMAT, "bos_token": TEXT_START, "eos_token": None,
                "pad_token": None, "unk_token": UNKNOWN_TEXT,
                "vocab_size": loaded.tokenizer.vocab_size,
                "model_max_length": loaded.model.config.context_length}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        """A text's ids, one a character (the model's unknown-character policy applied)."""
        loaded = (await served(body.model)).loaded
        generation.check_lengths([body.prompt], "prompt")
        tokens = [int(i) for i in loaded.tokenizer.encode(body.prompt)]
        return {"count": len(tokens), "max_model_len": loaded.model.config.context_length,
                "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        """The text of ids from /tokenize."""
        loaded = (await served(body.model)).loaded
        generation.check_lengths([body.tokens], "tokens")
        size = loaded.tokenizer.vocab_size
        for i, token in enumerate(body.tokens):
            if token >= size:
                raise RequestError(f"tokens[{i}] is {token}; this model's ids are 0 to "
                                   f"{size - 1}", f"tokens[{i}]")
        return {"prompt": loaded.tokenizer.decode(body.tokens)}
