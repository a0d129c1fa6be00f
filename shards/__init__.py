"""The shard format (schema, writer, reader) and the DALI input pipelines."""
from .camera import project
from .files import sha256_file
from .joints import BONES, JOINT_ORDERS, pose_kind
from .reader import check_manifest, index_path, iter_samples, list_shards, read_manifest, tar_samples
from .schema import SCHEMA_VERSION, Sample, SampleError, decode_members, encode_sample, validate
from .writer import ShardWriter, write_dali_index

__all__ = ["project", "sha256_file", "BONES", "JOINT_ORDERS", "pose_kind", "check_manifest", "index_path",
           "iter_samples", "list_shards", "read_manifest", "tar_samples", "SCHEMA_VERSION", "Sample", "SampleError",
           "decode_members", "encode_sample", "validate", "ShardWriter", "write_dali_index"]
