"""Provenance evidence read from an image's own bytes: C2PA manifests, IPTC/XMP digital source types, generator
metadata and the invisible watermarks of open models. Adapters only: what the entries mean (the fusion rule) is
:mod:`worker.core.evidence`."""
