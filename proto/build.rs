//! Compiles `microshop/**/*.proto` with the vendored `protoc`, so a fresh
//! machine needs no protobuf install, and writes the descriptor set that the
//! reflection service serves.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "microshop/inventory/v1/inventory.proto",
    "microshop/loyalty/v1/loyalty.proto",
    "microshop/order/v1/order.proto",
    "microshop/orchestrator/v1/orchestrator.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.include_file("microshop.rs");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(cfg!(feature = "client"))
        .build_server(cfg!(feature = "server"))
        .file_descriptor_set_path(out.join("microshop_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["."])?;
    Ok(())
}
