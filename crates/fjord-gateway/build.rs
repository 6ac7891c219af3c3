//! Compiles `proto/fjord/gateway/v1/gateway.proto` with protox (pure Rust: no protoc needed) into
//! prost messages and the tonic server trait, and writes the encoded descriptor set that gRPC
//! server reflection serves.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("fjord/gateway/v1/gateway.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("gateway_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Keys, values and header values as slices of the request buffer: no copy per message.
        .bytes(".fjord.gateway.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
