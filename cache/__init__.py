"""The teacher cache: the one library that reads and writes the stage-one HDF5 file.

schema (names, dtypes, version) · key (fingerprints) · writer (partial file, resume,
atomic finalize) · reader (TeacherCache) · verify · build (stage one: runs the teachers).
"""
from .key import cache_file_name, file_fingerprint, split_fingerprint
from .reader import CacheMeta, CacheMismatchError, TeacherCache
from .schema import SCHEMA, SCHEMA_VERSION
from .writer import CacheWriter, merge_shards

__all__ = ["CacheMeta", "CacheMismatchError", "CacheWriter", "SCHEMA", "SCHEMA_VERSION",
           "TeacherCache", "cache_file_name", "file_fingerprint", "merge_shards",
           "split_fingerprint"]
