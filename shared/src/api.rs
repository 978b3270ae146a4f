//! The generated `fusestream.v1` API (messages, clients, servers) and the encoded
//! descriptor set that server reflection serves.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("fusestream.v1");

/// Encoded `FileDescriptorSet` of `proto/fusestream/v1/fusestream.proto`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fusestream_descriptor.bin"));
