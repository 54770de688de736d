"""Finding a dataset's files in folders: recursively, in path order, split between the ranks of a torchrun job.

The walk uses ``os.scandir``, whose entries know from the directory listing whether they are files or folders (no
``stat`` a file, which a network file system answers with a round trip each), and visits each folder's entries in
name order, which is the order ``sorted`` gives the paths (part by part): no sort of the whole list, and no ``Path``
object a file (the result is a packed :class:`~openmae.data.filelist.FileList`). Inside
:func:`openmae.data.ranks.shared_by_ranks` each rank walks every world-size-th folder of the ones asked for (an
ImageFolder's classes, a folder's top-level subfolders) and the ranks exchange their lists, so that a job lists a
shared file system's folders once, not once a rank."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from openmae.data.filelist import FileList
from openmae.data.images import IMAGE_SUFFIXES
from openmae.data.ranks import RanksDisagree, share, shared_map


def _entries(folder: str, suffixes: tuple[str, ...]) -> list[tuple[str, str, bool]]:
    """(name, path, is a folder) of ``folder``'s subfolders and files ending in ``suffixes``, in the order their paths
    sort (by name; case-blind where paths compare so, as on Windows); hidden entries and links to folders are left
    out (as ``Path.rglob`` leaves links to folders below its root)."""
    found = []
    with os.scandir(folder) as listing:
        for entry in listing:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                found.append((entry.name, entry.path, True))
            elif entry.name.lower().endswith(suffixes) and entry.is_file():  # a broken link is not a file
                found.append((entry.name, entry.path, False))
    found.sort(key=lambda e: os.path.normcase(e[0]))
    return found


def _walk(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    """The files below ``folder`` ending in ``suffixes``, in path order (a folder's files where its name sorts)."""
    found: list[str] = []
    stack = [iter(_entries(folder, suffixes))]  # one iterator a folder being walked, innermost last
    while stack:
        for _, path, is_dir in stack[-1]:
            if is_dir:
                stack.append(iter(_entries(path, suffixes)))
                break
            found.append(path)
        else:
            stack.pop()
    return found


def find_in(folders: list[Path], suffixes: tuple[str, ...]) -> list[FileList]:
    """The files below each of ``folders`` (each list in path order). Inside ``shared_by_ranks`` each rank walks every
    world-size-th folder and the lists are exchanged; a folder that cannot be listed raises its error on every rank
    (none is left waiting for the others), and so do ranks that were asked for different folders (nodes whose
    copies of the data differ)."""
    asked = hashlib.sha1("\0".join(map(str, folders)).encode("utf-8", "surrogateescape")).hexdigest()
    try:
        found = shared_map(lambda i: FileList(_walk(str(folders[i]), suffixes)), len(folders), (OSError,),
                           agree=(asked, len(folders)))
    except RanksDisagree as err:
        where = folders[0].parent if folders else "(none)"
        raise RuntimeError(f"the ranks of this job were asked to list different folders (rank {share()[0]}: "
                           f"{len(folders)} under {where}; the ranks' counts: {[n for _, n in err.values]}): every "
                           "node must see the same data; is a node-local copy incomplete, or newer than another?"
                           ) from None
    for part in found:
        if isinstance(part, OSError):
            raise part
    return found  # type: ignore[return-value]


def find_images(root: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> FileList:
    """Files under ``root`` ending in one of ``suffixes`` (image files by default), recursively, in path order;
    hidden files and folders are ignored, and so are links to folders below ``root`` (as ``Path.rglob`` does). The
    top-level subfolders are shared between the ranks (:func:`find_in`)."""
    root = Path(root)
    if root.is_file():
        raise NotADirectoryError(f"{root} is a file; give the folder that holds the images (searched recursively)")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    top = _entries(str(root), suffixes)  # every rank lists the top level (one listing) to agree on the folders
    below = iter(find_in([Path(path) for _, path, is_dir in top if is_dir], suffixes))
    parts, files = [], []  # files: the top-level files since the last folder
    for _, path, is_dir in top:
        if is_dir:
            parts += [FileList(files), next(below)]
            files = []
        else:
            files.append(path)
    return FileList.concat([*parts, FileList(files)])
