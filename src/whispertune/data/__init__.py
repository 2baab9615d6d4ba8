"""Speech data: JSONL manifests, validation, statistics, splits, converters, AISHELL preparation."""

from whispertune.data.manifest import ManifestError, Sample, Segment, read_manifest, write_manifest

__all__ = ["ManifestError", "Sample", "Segment", "read_manifest", "write_manifest"]
