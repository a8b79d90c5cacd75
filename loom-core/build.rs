//! Compiles `proto/loom/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let file = "loom/v1/loom.proto";
    println!("cargo:rerun-if-changed={proto_root}/{file}");
    let fds = protox::compile([file], [proto_root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
