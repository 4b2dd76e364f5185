"""The dataset catalog: named datasets with numbered versions that never change, under a storage root.

    <storage>/catalog/<name>/<version>.json    one CatalogVersion per version: 1, 2, ...

A spec names a catalog dataset as `catalog: NAME` (its newest version when a run starts) or
`catalog: NAME@N` (version N). A run resolves names to versions when it starts (`resolve_spec`) and keeps
the spec as resolved, so that it can be trained again on the same versions.

Publishing is create-only (`storage.create_new`): a publisher takes the number after the newest it sees,
and where another publisher took that number first it takes the next. Two publishers at once both get a
version, and neither is lost. Torch-free: the CLI and the pipeline's steps use it.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import socket
import sys
import time

from mega3d.trainer import storage
from mega3d.trainer.data.format import DatasetError, dataset_problems, index_uri, load_index
from mega3d.trainer.records import CatalogVersion
from mega3d.trainer.spec import CATALOG_NAME, DatasetSpec, ExperimentSpec

CATALOG_DIR = "catalog"
VERSION_FILE = re.compile(r"^(?P<version>[1-9][0-9]*)\.json$")
NAME = re.compile(rf"^{CATALOG_NAME}$")
PUBLISH_ATTEMPTS = 1000  # each attempt is lost only to another publisher that took the number first


class CatalogError(ValueError):
    """A name, version or dataset the catalog does not have; one line naming what was asked for."""


def catalog_dir(root: str, name: str) -> str:
    return storage.join(root, CATALOG_DIR, name)


def _version_numbers(root: str, name: str) -> list[int]:
    found = (VERSION_FILE.match(uri.rsplit("/", 1)[-1]) for uri in storage.list_dir(catalog_dir(root, name)))
    return sorted(int(match["version"]) for match in found if match is not None)


def versions(root: str, name: str) -> list[CatalogVersion]:
    """Every version of `name`, oldest first; none for a name that was never published."""
    directory = catalog_dir(root, name)
    return [CatalogVersion.read(storage.join(directory, f"{n}.json")) for n in _version_numbers(root, name)]


def names(root: str) -> list[str]:
    """Every dataset name of the catalog at `root` that has a version."""
    return [
        name
        for name in (uri.rsplit("/", 1)[-1] for uri in storage.list_dir(storage.join(root, CATALOG_DIR)))
        if NAME.match(name) and _version_numbers(root, name)
    ]


def check_name(name: str, where: str) -> None:
    if not NAME.match(name):
        raise CatalogError(
            f"{where}: {name!r} is not a catalog name (letters, digits, '.', '_' and '-', at most 63, "
            "starting with a letter or digit)"
        )


def publish(root: str, name: str, dataset_uri: str, made_from: str = "") -> tuple[CatalogVersion, bool]:
    """Add the dataset at `dataset_uri` as the next version of `name`: the version, and True. Where the
    newest version is this dataset already (the same URI and fingerprint), that version and False.
    CatalogError, with nothing written, where no whole dataset is there."""
    check_name(name, "NAME")
    dataset_uri = storage.local_absolute(dataset_uri)
    try:
        if not storage.exists(index_uri(dataset_uri)):
            raise CatalogError(f"{dataset_uri}: no dataset there to publish (it has no index.npz)")
        index = load_index(index_uri(dataset_uri))
        problems = dataset_problems(dataset_uri)
    except (DatasetError, OSError) as error:
        raise CatalogError(f"{dataset_uri}: not published: {error}") from None
    if problems:
        raise CatalogError(f"{dataset_uri}: not published, the dataset is incomplete: {problems[0]}")
    command = shlex.join([os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]])
    for _ in range(PUBLISH_ATTEMPTS):
        numbers = _version_numbers(root, name)
        if numbers:
            newest = CatalogVersion.read(storage.join(catalog_dir(root, name), f"{numbers[-1]}.json"))
            if (newest.uri, newest.fingerprint) == (dataset_uri, index.fingerprint):
                return newest, False
        version = CatalogVersion(
            name=name,
            version=(numbers[-1] if numbers else 0) + 1,
            uri=dataset_uri,
            fingerprint=index.fingerprint,
            videos=len(index),
            classes=len(index.classes),
            published=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            published_by=f"{command} (pid {os.getpid()} on {socket.gethostname()})",
            made_from=made_from,
        )
        uri = storage.join(catalog_dir(root, name), f"{version.version}.json")
        if storage.create_new(uri, storage.json_bytes(version.to_json())):
            return version, True
    raise CatalogError(f"{catalog_dir(root, name)}: could not take a version number (too many publishers)")


def parse_reference(reference: str) -> tuple[str, int | None]:
    """`name` or `name@N` (as DatasetSpec.catalog has been checked to be)."""
    name, _, pinned = reference.partition("@")
    return name, int(pinned) if pinned else None


def resolve(root: str, reference: str, where: str) -> CatalogVersion:
    """The version a reference names: `name@N`, or the newest of `name`. CatalogError naming `where`
    for a name never published, a version that is not (or no longer) there, or a version whose dataset
    is gone."""
    name, pinned = parse_reference(reference)
    numbers = _version_numbers(root, name)
    if not numbers:
        known = names(root)
        close = difflib.get_close_matches(name, known, n=1)
        hint = (
            f"; did you mean {close[0]!r}?" if close else (f" (it has: {', '.join(known)})" if known else "")
        )
        raise CatalogError(
            f"{where}: no dataset {name!r} in the catalog at {storage.join(root, CATALOG_DIR)}{hint}"
        )
    if pinned is not None and pinned not in numbers:
        listed = ", ".join(str(n) for n in numbers)
        raise CatalogError(f"{where}: {name} has no version {pinned} (its versions: {listed})")
    version = CatalogVersion.read(storage.join(catalog_dir(root, name), f"{pinned or numbers[-1]}.json"))
    if not storage.exists(index_uri(version.uri)):
        raise CatalogError(f"{where}: {version.reference} is {version.uri}, which holds no dataset any more")
    return version


def resolve_spec(spec: ExperimentSpec) -> tuple[ExperimentSpec, dict[str, CatalogVersion]]:
    """The spec with every catalog dataset pinned to a version and given that version's URI, and the
    versions by dataset name. A spec without catalog datasets is returned as it is."""
    resolved: dict[str, CatalogVersion] = {}
    datasets = dict(spec.datasets)
    for name, dataset in spec.datasets.items():
        if dataset.catalog is None:
            continue
        version = resolve(spec.storage, dataset.catalog, f"datasets.{name}.catalog")
        resolved[name] = version
        datasets[name] = DatasetSpec(uri=version.uri, catalog=version.reference)
    if not resolved:
        return spec, {}
    return spec.model_copy(update={"datasets": datasets}), resolved
