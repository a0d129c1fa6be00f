"""The shard format (schema, writer, reader) and the DALI input pipelines."""
from .reader import iter_samples, list_shards, read_manifest, index_path
from .schema import JOINT_ORDERS, SCHEMA_VERSION, Sample, SampleError, validate, encode_sample, decode_members, project
from .writer import ShardWriter, write_dali_index, sha256_file

__all__ = ["iter_samples", "list_shards", "read_manifest", "index_path", "JOINT_ORDERS", "SCHEMA_VERSION",
           "Sample", "SampleError", "validate", "encode_sample", "decode_members", "project",
           "ShardWriter", "write_dali_index", "sha256_file"]
