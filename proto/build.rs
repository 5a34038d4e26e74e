//! Compiles `proto/tidings/v1/*.proto` at build time with `protox` (pure Rust: nothing to install),
//! then generates prost types and their proto3 JSON mapping (pbjson).

use std::{env, path::PathBuf};

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/tidings/v1/tidings.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.compile_fds(descriptors.clone())?;

    let descriptor_bytes = descriptors.encode_to_vec();
    // Unknown JSON fields are skipped, as protobuf skips unknown fields: a client (or server) that
    // knows a newer protocol keeps working with an older peer.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .ignore_unknown_fields()
        .out_dir(&out_dir)
        .build(&[".tidings.v1"])?;
    Ok(())
}
