"""Layover's testing wing: sample images and releases, attachments, and pushing them into a registry.

    images.py     the one image generator: layers, configs, Docker/OCI manifests, indexes
    releases.py   the deterministic sample release history (release 1 and 2) built with it
    push.py       push an image or a release over the registry HTTP API (loopback only)
    attached.py   cosign signatures and attestations, SPDX SBOM referrers, and their verifier
    __main__.py   `python -m layover.testing push|list`

Shipped with the package because the demo (scripts/demo.py), the benchmark fixture (bench/) and
the tests use it; product code paths never import it. push.py and attached.py do network I/O.
"""
