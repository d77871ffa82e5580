//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "sipcluster/location/v1/location.proto",
        "sipcluster/dispatcher/v1/admin.proto",
        "sipcluster/media/v1/relay.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
