"""The models a server can serve besides the one it was started with: the other versions and
aliases of that registered model, which a request names as its `model` (`shakespeare/2`,
`shakespeare@champion`, `shakespeare/latest`, or as `models:/` URIs), so that the playground
can set two of them side by side. A model served from a package directory or a run has no
registered versions: its catalog is empty.

The server's own process reads the registry (Registry: MLflow, never imported by a worker),
hands each worker the Catalog, re-reads it every --refresh-seconds so that a moved alias is
followed, and downloads a version once when a worker first asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

URI_PREFIX = "models:/"


@dataclass(frozen=True)
class Version:
    number: str
    run_id: str | None
    created: int  # seconds since the epoch, OpenAI's `created`


@dataclass(frozen=True)
class Catalog:
    """A registered model's versions and aliases as the registry had them, and the `mlflow ui`
    page of each run that trained one (run_page_note: what to do before it opens)."""

    name: str | None = None  # None: the served model is no registered version
    versions: tuple[Version, ...] = ()  # oldest first
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    run_pages: dict[str, str] = field(default_factory=dict)  # run id -> its page
    run_page_note: str | None = None

    def ids(self) -> dict[str, str]:
        """The model ids a request may name -> the version each names now."""
        if not (self.name and self.versions):
            return {}
        found = {f"{self.name}@{alias}": version for alias, version in self.aliases.items()}
        found[f"{self.name}/latest"] = self.versions[-1].number
        found.update({f"{self.name}/{v.number}": v.number for v in reversed(self.versions)})
        return found

    def names(self) -> set[str]:
        """Every name a request may give: each id, and each as a models:/ URI."""
        return {form for id_ in self.ids() for form in (id_, URI_PREFIX + id_)}

    def version_of(self, model: str) -> str | None:
        """The version a request's `model` names now; None when it names none of these."""
        return self.ids().get(model.removeprefix(URI_PREFIX))

    def uri(self, number: str) -> str:
        return f"{URI_PREFIX}{self.name}/{number}"

    def version(self, number: str | None) -> Version | None:
        return next((v for v in self.versions if v.number == number), None)

    def aliases_of(self, number: str | None) -> list[str]:
        return [alias for alias, version in self.aliases.items() if version == number]


class Registry:
    """The registry as the server's own process reads it for the model it serves: the Catalog,
    the version an alias or /latest names now, and each version downloaded once."""

    def __init__(self, served, tracking_uri: str | None):
        from tinyllm.tracking.discovery import open_store, pinned_uri

        self.served = served  # a registry.ResolvedModel
        self.store = open_store(tracking_uri)[0] if served.name or served.run_id else None
        self.pages: dict[str, str | None] = {}  # run id -> its page (None: the run is gone)
        self.downloaded = {pinned_uri(served): served}  # pinned URI -> ResolvedModel
        self.catalog = Catalog()
        self.refresh()

    @property
    def changes(self) -> bool:
        """Whether the catalog can change: the served model is a registered one."""
        return bool(self.served.name)

    def refresh(self) -> Catalog:
        """Read the catalog again."""
        from tinyllm.tracking.registry import registry_versions
        from tinyllm.tracking.store import ui_note

        if self.store is None:
            return self.catalog
        name, versions, aliases = self.served.name, [], {}
        if name:
            found, aliases = registry_versions(self.store, name)
            versions = [Version(str(v.version), v.run_id or None,
                                (v.creation_timestamp or 0) // 1000) for v in found]
        runs = {v.run_id for v in versions} | {self.served.run_id}
        pages = {run: page for run in runs if run and (page := self._page(run))}
        self.catalog = Catalog(name, tuple(versions), aliases, pages, ui_note(self.store))
        return self.catalog

    def _page(self, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        from tinyllm.tracking.store import run_route, ui_address

        if run_id not in self.pages:
            try:
                experiment = self.store.client.get_run(run_id).info.experiment_id
                self.pages[run_id] = ui_address(self.store, run_route(experiment, run_id))
            except MlflowException:
                self.pages[run_id] = None
        return self.pages[run_id]

    def resolve(self, uri: str):
        """The ResolvedModel of the version uri (a name of the catalog) names now."""
        from tinyllm.errors import TinyLLMError
        from tinyllm.tracking.registry import resolve_model_uri

        version = self.catalog.version_of(uri)
        if version is None:
            raise TinyLLMError(f"{uri} is not a version of the model served")
        pinned = self.catalog.uri(version)
        if pinned not in self.downloaded:
            self.downloaded[pinned] = resolve_model_uri(pinned, self.store)
        return replace(self.downloaded[pinned], uri=uri)

    def moved(self):
        """The served model's new version when its alias (or /latest) names another in the
        catalog now; else None."""
        from tinyllm.tracking.discovery import moves

        now = self.catalog.version_of(self.served.uri)
        if not moves(self.served.uri) or now in (None, self.served.version):
            return None
        self.served = self.resolve(self.served.uri)
        return self.served
