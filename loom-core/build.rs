//! Compiles `proto/loom/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let file = "loom/v1/loom.proto";
    println!("cargo:rerun-if-changed={proto_root}/{file}");
    let fds = protox::compile([file], [proto_root])?;
    // The gRPC client/server code needs tonic; the codec-only build (Python extension) skips it.
    let grpc = std::env::var_os("CARGO_FEATURE_RUNTIME").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .compile_fds(fds)?;
    Ok(())
}
