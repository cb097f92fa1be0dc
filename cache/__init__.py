"""The teacher cache: the one library that reads and writes the stage-one HDF5 file.

schema (names, dtypes, version, the entry key table) · key (fingerprints) · writer (partial
file, resume, atomic finalize, shard merge) · reader (TeacherCache) · verify. h5py and NumPy
only: the teachers that fill it run in :mod:`pipeline.stages.teacher_cache`.
"""
from .key import cache_file_name, file_fingerprint, split_fingerprint
from .reader import CacheMeta, CacheMismatchError, TeacherCache
from .schema import ENTRY_KEYS, INTEGER_KEYS, SCHEMA, SCHEMA_VERSION
from .writer import CacheWriter, merge_shards

__all__ = ["CacheMeta", "CacheMismatchError", "CacheWriter", "ENTRY_KEYS", "INTEGER_KEYS",
           "SCHEMA", "SCHEMA_VERSION",
           "TeacherCache", "cache_file_name", "file_fingerprint", "merge_shards",
           "split_fingerprint"]
