"""Many generations sharing one model: each decoding step is one forward pass over all of them.

A server answering several clients at once would otherwise run one forward pass per client per
character. Here every active sequence advances by one character per step, in one pass, each with
its own KV cache, sampling settings and random generator, so a request gives exactly the text
`stream_tokens` gives alone (the same seed, the same text, byte for byte, whatever else runs):

- a new sequence's prompt is run alone, by the same call `stream_tokens` makes;
- in the shared step the matrix products are batched matrix products, one small product per
  sequence, which compute each row exactly as the single-sequence pass does (a plain batched
  matmul of B rows may round differently from one row at a time, so its text could differ);
  the mask is made once a step and the transposed weights once a model, not per layer: at
  these sizes a step costs mostly the launching of its operations;
- attention runs in one call for all of them, each row over its whole cache buffer with the
  slots after its position masked, as the model attends alone (model.attend_one), so rows of
  different lengths get what each gets alone.

The Decoder runs in its own thread; callers submit a sequence and receive its tokens through a
callback, and may cancel it at any moment (a client that went away). A failure never stops it:
a sequence whose draw fails (e.g. a model giving NaN) ends with FAILED, a whole step that fails
ends every sequence of that step with FAILED, and the next step serves what comes next; `failures`
counts them for /health.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tinyllm.config import SamplingConfig
from tinyllm.generate import Draw, Sampler
from tinyllm.model import GPT, KVCache, attend_one, visible_slots
from tinyllm.tokenizer import UNKNOWN_ID

log = logging.getLogger(__name__)

# What a sequence's callback receives once it has ended, instead of a token id.
LENGTH, TIMEOUT, CANCELLED, SHUTDOWN = "length", "timeout", "cancelled", "shutdown"
FAILED = "failed"  # its error says why
IDLE_WAIT = 0.5  # seconds the idle decoder waits for a sequence before it looks again
HELD_WAIT = 0.01  # and when every sequence waits for its reader


@dataclass
class Failures:
    """The decoder's failures so far: how many, and the last one's time.monotonic() and error."""

    count: int = 0
    last_at: float = float("-inf")
    last_error: str | None = None

    def note(self, error: str) -> None:
        self.count, self.last_at, self.last_error = self.count + 1, time.monotonic(), error


@dataclass(eq=False)
class Sequence:
    """One generation in progress. emit(token id, a Draw when top_logprobs is a number (see
    tinyllm.generate.Sampler), or an end reason) runs in the decoder thread."""

    prompt_ids: list[int]
    settings: SamplingConfig
    emit: Callable[[int | Draw | str], None]
    deadline: float = float("inf")  # time.monotonic() after which it ends with TIMEOUT
    top_logprobs: int | None = None
    cancelled: bool = False
    window: list[int] = field(default_factory=list)
    cache: SlotCache | None = None
    sampler: Sampler | None = None
    remaining: int = 0
    error: str | None = None  # why it ended with FAILED
    behind: Callable[[], bool] = lambda: False  # while its reader is behind it waits (its
    # deadline runs on): a slow reader never has a whole reply queued for it

    def cancel(self) -> None:
        """Stop generating for it (e.g. its client disconnected); safe from any thread."""
        self.cancelled = True


def transposed_weights(model: GPT) -> list[torch.Tensor]:
    """Every matrix decode_step multiplies by, transposed (views, taken once per model): each
    block's qkv, attention projection, MLP up and down, then the head."""
    linears = [m for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.up, b.mlp.proj)]
    return [m.weight.t() for m in [*linears, model.lm_head]]


class SlotCache(KVCache):
    """One sequence's KV cache: its slot of the decoder's shared key/value buffers, so that
    all sequences attend in one call."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slot: int):
        self.keys, self.values = keys[:, slot:slot + 1], values[:, slot:slot + 1]
        self.slot, self.length = slot, 0


@torch.inference_mode()
def decode_step(model: GPT, weights: list[torch.Tensor], tokens: list[int],
                caches: list[SlotCache], keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Logits [B, vocab] for one new token per sequence, appended to its cache in the shared
    buffers keys/values; each row equals model(tensor([[token]]), cache=cache) for that
    sequence alone. weights: transposed_weights(model).

    Each matrix product is a bmm of one row per sequence by the expanded weight: bmm gives each
    row exactly F.linear's result for that row alone."""
    device = model.tok_emb.weight.device
    batch, width = len(tokens), model.config.d_model
    positions = torch.tensor([c.length for c in caches], device=device)
    slots = torch.tensor([c.slot for c in caches], device=device)
    visible = visible_slots(positions, keys.size(3))
    weight = iter([w.expand(batch, *w.shape) for w in weights])
    x, turns = model.embed(torch.tensor(tokens, device=device)[:, None], positions[:, None])
    for layer, block in enumerate(model.blocks):
        q, k, v = block.attn.heads(torch.bmm(block.ln_1(x), next(weight)), turns)
        keys[layer, slots, :, positions] = k[:, :, 0]
        values[layer, slots, :, positions] = v[:, :, 0]
        y = attend_one(q, keys[layer].index_select(0, slots),
                       values[layer].index_select(0, slots), visible)
        x = x + torch.bmm(y.reshape(batch, 1, width), next(weight))
        up, down = next(weight), next(weight)
        x = x + torch.bmm(block.mlp.activation(torch.bmm(block.ln_2(x), up)), down)
    for cache in caches:
        cache.length += 1
    return torch.bmm(model.ln_f(x), next(weight))[:, 0]


class Decoder:
    """A thread that advances every submitted sequence one token per step, up to max_batch."""

    def __init__(self, model: GPT, max_batch: int = 64):
        self.model = model.eval()
        self.weights = transposed_weights(model)
        self.max_batch = max_batch
        self.context = model.config.context_length
        self.device = model.tok_emb.weight.device
        self.incoming: queue.SimpleQueue[Sequence] = queue.SimpleQueue()
        shared = model.new_cache(max_batch)  # one slot per sequence in flight
        self.keys, self.values = shared.keys, shared.values
        self.free = list(range(max_batch))
        self.slots: dict[int, int] = {}  # id(sequence) -> its slot
        self.active: list[Sequence] = []
        self.stopping = False
        self.retired = False  # ends its thread once its sequences are done
        # submit's check and put, and the thread's last stop, one at a time: a sequence is
        # either queued before the thread drains the queue, or told SHUTDOWN, never stranded.
        self.closing = threading.Lock()
        self.after_step: Callable[[], None] = lambda: None
        self.failures = Failures()
        self.thread = threading.Thread(target=self._run, name="tinyllm-decoder", daemon=True)
        self.thread.start()

    @property
    def in_flight(self) -> int:
        return len(self.active) + self.incoming.qsize()

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self.stopping

    def submit(self, sequence: Sequence) -> Sequence:
        with self.closing:
            if not self.stopping:
                self.incoming.put(sequence)
                return sequence
        sequence.emit(SHUTDOWN)  # its thread has ended: nobody else would wake the request
        self.after_step()
        return sequence

    def stop(self) -> None:
        """End every sequence now (SHUTDOWN) and the thread with them."""
        self.stopping = True
        self.incoming.put(None)

    def retire(self) -> None:
        """Finish what was submitted, then end the thread (a newer model took over)."""
        self.retired = True
        self.incoming.put(None)

    def _admit(self, wait: float | None) -> None:
        """Take the sequences submitted, up to max_batch, waiting up to `wait` seconds for the
        first (None: only those already there)."""
        while len(self.active) < self.max_batch:
            try:
                sequence = self.incoming.get(block=wait is not None, timeout=wait)
            except queue.Empty:
                return
            wait = None
            if sequence is None:
                continue
            sequence.window = sequence.prompt_ids[-self.context:] or [UNKNOWN_ID]
            sequence.sampler = Sampler(sequence.settings, self.model.config.vocab_size,
                                       sequence.top_logprobs)
            sequence.remaining = sequence.settings.max_tokens
            self.slots[id(sequence)] = self.free.pop()
            self.active.append(sequence)

    def _run(self) -> None:
        stepped = True  # whether the last step drew for any sequence (else all wait)
        try:
            while not self.stopping and not (self.retired and not self.active
                                              and self.incoming.empty()):
                self._admit(IDLE_WAIT if not self.active else None if stepped else HELD_WAIT)
                if self.active:
                    try:
                        stepped = self._step()
                    except Exception as exc:  # the step's sequences fail; the next step runs
                        self._fail(self.active, exc)
                        self.active, stepped = [], True
                    self.after_step()
        except Exception:  # a bug outside a step: end every sequence, never leave one waiting
            log.exception("decoder failed")
        finally:
            with self.closing:
                self.stopping = True
            for sequence in self.active:
                sequence.emit(SHUTDOWN)
            self.active = []
            while not self.incoming.empty():
                sequence = self.incoming.get()
                if sequence is not None:
                    sequence.emit(SHUTDOWN)
            self.after_step()

    @torch.inference_mode()
    def _step(self) -> int:
        """One token for every active sequence whose reader is not behind, exactly as
        stream_tokens would sample it; how many got one."""
        now = time.monotonic()
        live = []
        for sequence in self.active:
            if sequence.cancelled:
                self._end(sequence, CANCELLED)
            elif now > sequence.deadline:
                self._end(sequence, TIMEOUT)
            else:
                live.append(sequence)
        self.active = live
        stepping = [s for s in live if not s.behind()]
        fresh = [s for s in stepping if s.cache is None]
        going = [s for s in stepping if s.cache is not None]
        logits = {}
        for sequence in fresh:  # the prompt (or a slid window), alone, as stream_tokens does
            sequence.cache = SlotCache(self.keys, self.values, self.slots[id(sequence)])
            out, _ = self.model(torch.tensor([sequence.window], device=self.device),
                                cache=sequence.cache)
            logits[id(sequence)] = out[0, -1]
        if len(going) == 1:  # alone: the model's own pass is the quickest
            sequence = going[0]
            out, _ = self.model(torch.tensor([[sequence.window[-1]]], device=self.device),
                                cache=sequence.cache)
            logits[id(sequence)] = out[0, -1]
        elif going:
            rows = decode_step(self.model, self.weights, [s.window[-1] for s in going],
                               [s.cache for s in going], self.keys, self.values)
            for i, sequence in enumerate(going):
                logits[id(sequence)] = rows[i]
        keep = max(1, self.context // 2)
        failed = []
        for sequence in stepping:
            try:
                drawn = sequence.sampler.draw(logits[id(sequence)])
            except Exception as exc:  # this sequence's failure only (e.g. NaN logits)
                self._fail([sequence], exc)
                failed.append(sequence)
                continue
            sequence.emit(drawn)
            token = drawn.token if isinstance(drawn, Draw) else drawn
            sequence.remaining -= 1
            sequence.window.append(token)
            if len(sequence.window) > self.context:
                sequence.window, sequence.cache = sequence.window[-keep:], None
            if sequence.remaining == 0:
                self._end(sequence, LENGTH)
        self.active = [s for s in live if s.remaining > 0 and s not in failed]
        return len(stepping)

    def _fail(self, sequences: list[Sequence], exc: Exception) -> None:
        """End sequences with FAILED, their cache slots wiped: masked attention still multiplies
        by a slot's stale values, and 0 x NaN would poison the next sequence there."""
        log.error("generation failed for %d sequence(s)", len(sequences), exc_info=exc)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        self.failures.note(error)
        for sequence in sequences:
            slot = self.slots.get(id(sequence))
            if slot is not None:
                self.keys[:, slot].zero_()
                self.values[:, slot].zero_()
            sequence.error = error
            self._end(sequence, FAILED)

    def _end(self, sequence: Sequence, reason: str) -> None:
        if id(sequence) in self.slots:
            self.free.append(self.slots.pop(id(sequence)))
        sequence.emit(reason)
