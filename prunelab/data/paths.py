"""Where the offline data lives: ``--data-dir`` > ``$PRUNELAB_DATA`` > ``../shared/data`` next to the checkout.

A location the user *names* (``--data-dir``, or ``$PRUNELAB_DATA`` when no ``--data-dir`` is given) is
binding: it is the only folder searched, and a dataset missing there is an error naming the files looked
for (:func:`locate`). Only when no location is named are the default folders tried (``shared/data`` beside
the checkout or the working directory), and a dataset none of them holds falls back to its HF ``datasets``
name in :mod:`prunelab.data.loaders` (needs internet). The data is never copied into the repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# the roots themselves sit on the ground floor (prunelab.atomic protects them); re-exported for the data layer
from prunelab.data_roots import ExplicitLocation, candidate_roots, explicit_location, set_data_dir
from prunelab.errors import PrunelabError

__all__ = ["ExplicitLocation", "candidate_roots", "data_root", "explicit_location", "find_file", "locate",
           "missing_in_named_folder", "require_file", "set_data_dir"]


def data_root() -> Path | None:
    """The first existing data root, or None."""
    for root in candidate_roots():
        if root.is_dir():
            return root
    return None


def find_file(dataset: str, filename: str) -> Path | None:
    """``<root>/<dataset>/<filename>`` in the first root that has it, else None (never raises)."""
    for root in candidate_roots():
        path = root / dataset / filename
        if path.is_file():
            return path
    return None


def missing_in_named_folder(files: Sequence[tuple[str, str]], explicit: ExplicitLocation) -> PrunelabError:
    """The one-line error for ``(dataset, filename)`` pairs missing from the folder the user named."""
    datasets = ", ".join(dict.fromkeys(d for d, _ in files))
    looked = ", ".join(str(explicit.root / d / f) for d, f in files)
    where = f"{explicit.origin} {explicit.root}"
    if not explicit.root.is_dir():
        where += " (not a folder)"
    return PrunelabError(
        f"{where} has no {datasets} data: looked for {looked}; put the file(s) there, or name no data location "
        "(neither --data-dir nor PRUNELAB_DATA) to fall back to the HF datasets download"
    )


def locate(dataset: str, filename: str) -> Path | None:
    """The local copy of ``<dataset>/<filename>``, or None when the caller may fall back to HF ``datasets``.

    None only when the user named no data location; a named folder lacking the file raises a
    :class:`PrunelabError` listing the dataset and the path looked for (a named location is binding).
    """
    path = find_file(dataset, filename)
    if path is None and (explicit := explicit_location()) is not None:
        raise missing_in_named_folder([(dataset, filename)], explicit)
    return path


def require_file(dataset: str, filename: str) -> Path:
    """Like :func:`find_file` but raises a clear error naming every place looked (for data with no HF fallback)."""
    path = find_file(dataset, filename)
    if path is None:
        explicit = explicit_location()
        if explicit is not None:
            raise missing_in_named_folder([(dataset, filename)], explicit)
        looked = ", ".join(str(r / dataset / filename) for r in candidate_roots())
        raise PrunelabError(
            f"data file {dataset}/{filename} not found; looked in: {looked} "
            "(set PRUNELAB_DATA or --data-dir to the folder holding the datasets)"
        )
    return path
