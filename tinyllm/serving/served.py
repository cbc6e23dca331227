"""The model versions a worker serves, each loaded with the decoder its requests share: the one
it was started with (then each newer version an alias or /latest moves to), and, when a request
names one, another version of its registered model (catalog.py), loaded then for side by side."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyllm.errors import user_error_message
from tinyllm.serving.batching import Decoder
from tinyllm.serving.catalog import URI_PREFIX, Catalog
from tinyllm.serving.requests import RequestError
from tinyllm.tracking.discovery import load_resolved, pinned_uri

MAX_OTHERS = 2  # versions a worker holds besides the one it serves: two to set side by side


@dataclass
class Served:
    """One loaded model version and the decoder its requests share."""

    loaded: Any  # tinyllm.package.LoadedModel
    decoder: Decoder

    @property
    def id(self) -> str:
        source = self.loaded.source
        return source.name or Path(source.uri).name

    @property
    def uri(self) -> str:
        return pinned_uri(self.loaded.source)


class ServedModel:
    """The model a server serves: a resolved model, then each newer version it is given. A
    request may also name another version of the catalog; it is loaded then (resolve: a
    catalog URI -> its registry.ResolvedModel), and at most MAX_OTHERS are kept, the one
    used longest ago dropped first."""

    def __init__(self, resolved, device: str = "cpu", max_batch: int = 64,
                 catalog: Catalog | None = None, resolve=None):
        self.device, self.max_batch = device, max_batch
        self.after_step = lambda: None
        self.current = self._serve(load_resolved(resolved, device))
        self.served_as = resolved.uri  # e.g. an alias, followed
        self.catalog = catalog or Catalog()
        self.resolve = resolve
        self.others: collections.OrderedDict[str, Served] = collections.OrderedDict()
        self.loading = threading.Lock()

    def _serve(self, loaded) -> Served:
        decoder = Decoder(loaded.model, self.max_batch)
        decoder.after_step = lambda: self.after_step()
        return Served(loaded, decoder)

    def swap(self, resolved) -> None:
        """Serve resolved from the next request on; requests in flight finish on the old one."""
        old, self.current = self.current, self._serve(load_resolved(resolved, self.device))
        old.decoder.retire()

    def names(self) -> set[str]:
        """The names a request's `model` may give: the model's id, the URI it was served as,
        its exact version's URI, and the catalog's."""
        current = self.current
        return {current.id, self.served_as, current.uri} | self.catalog.names()

    async def served(self, model: str) -> Served:
        """The version a request's `model` names (another of the catalog is loaded now if need
        be); a 404 naming `model` when it names none here."""
        current = self.current
        if model in (current.id, self.served_as, current.uri):
            return current
        version = self.catalog.version_of(model)
        if version is None:
            others = " and the versions GET /v1/models lists" if self.catalog.ids() else ""
            raise RequestError(f"model '{model}' is not served here; this server serves "
                               f"'{current.id}' ({current.uri}){others}", "model", 404,
                               "model_not_found")
        if version == current.loaded.source.version:
            return current
        other = self.others.get(version)
        if other is None:
            return await asyncio.to_thread(self._load, version)
        with contextlib.suppress(KeyError):  # dropped meanwhile: still usable by this request
            self.others.move_to_end(version)
        return other

    def _load(self, version: str) -> Served:
        with self.loading:  # one load at a time, and each version once
            if version not in self.others:
                uri = self.catalog.uri(version)
                try:
                    loaded = load_resolved(self.resolve(uri), self.device)
                except Exception as exc:
                    raise RequestError(f"model {uri} cannot be loaded here: "
                                       f"{user_error_message(exc) or repr(exc)}", "model",
                                       503) from None
                self.others[version] = self._serve(loaded)
                while len(self.others) > MAX_OTHERS:
                    self.others.popitem(last=False)[1].decoder.retire()
            return self.others[version]

    def objects(self) -> list[dict]:
        """GET /v1/models: the model served (by its id), then each id of the catalog."""
        current, catalog = self.current, self.catalog
        source = current.loaded.source
        found = [self._object(current.id, current.uri, self.served_as, source.version,
                              source.run_id)]
        for id_, number in catalog.ids().items():
            found.append(self._object(id_, catalog.uri(number), URI_PREFIX + id_, number,
                                      catalog.version(number).run_id))
        return found

    def object(self, model: str) -> dict:
        """GET /v1/models/{model}: what objects() says of it; a 404 naming it if it is none."""
        current = self.current
        wanted = current.id if model in (self.served_as, current.uri) else model
        found = {o["id"]: o for o in self.objects()}.get(wanted.removeprefix(URI_PREFIX))
        if found is None:
            raise RequestError(f"model '{model}' is not served here", "model", 404,
                               "model_not_found")
        return found

    def _object(self, id_: str, uri: str, served_as: str, number: str | None,
                run_id: str | None) -> dict:
        catalog = self.catalog
        page = catalog.run_pages.get(run_id or "")
        version = catalog.version(number)
        return {"id": id_, "object": "model", "created": version.created if version else 0,
                "owned_by": "tinyllm", "version": uri, "served_as": served_as,
                "aliases": catalog.aliases_of(number), "run_id": run_id, "run_page": page,
                "run_page_note": catalog.run_page_note if page else None}

    def stop(self) -> None:
        for served in (self.current, *self.others.values()):
            served.decoder.stop()
