"""Serving: the OpenAI-style HTTP app, its request schemas, workers, batching and balancing."""
