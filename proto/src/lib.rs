//! The gRPC contract of the microshop mesh, generated from `proto/`.
//!
//! Everything generated lives under [`grpc`], one module per versioned proto
//! package, so service crates name types as `grpc::inventory::v1::...`.
//! Domain types live in the service crates; each has one `conversions`
//! module between them and these wire types.

/// Generated messages, clients (feature `client`) and servers (feature
/// `server`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod grpc {
    include!(concat!(env!("OUT_DIR"), "/microshop.rs"));
}

/// Encoded `FileDescriptorSet` of every microshop proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/microshop_descriptor.bin"));

pub use grpc::microshop::{inventory, loyalty, orchestrator, order};
