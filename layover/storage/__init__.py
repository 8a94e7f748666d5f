"""Registry storage: the one place that knows the tree a Distribution registry keeps on disk.

    layout.py   the tree, drawn once: the only path builder and link parser
    hashing.py  sha256 of files and digests' hex form
    walk.py     the one reachability walk: manifests -> index children, configs, layers
    images.py   what a tree serves for a listed image (resolve, complete, pinned roots)
    gc.py       mark and sweep: a pure plan of what nothing reachable needs
    vacuum.py   apply a GC plan: deletes only, never renames (overlayfs)
    verify.py   prove a tree (or a tarball) serves exactly the listed images
    repair.py   find damaged archive files and remove them so they are fetched again
    prune.py    hide every repository's manifests in the overlay's merged view

No Prefect, Docker or subprocess imports here (docs/design.md §2).
"""
