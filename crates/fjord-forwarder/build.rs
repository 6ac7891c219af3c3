//! Compiles `proto/fjord/forwarder/v1/forwarder.proto` with protox (pure Rust: no protoc needed)
//! into prost messages, the tonic client the forwarder uses and the server trait tests implement.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("fjord/forwarder/v1/forwarder.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
