//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "sipcluster/location/v1/location.proto",
        "sipcluster/dispatcher/v1/admin.proto",
        "sipcluster/media/v1/relay.proto",
        "sipcluster/cdr/v1/cdr.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    // The CDR messages also get the proto3 JSON mapping (serde, through pbjson): the
    // all-in-one writes CDRs as JSON lines and `sipcluster cdr tail --json` prints them.
    let descriptors = prost::Message::encode_to_vec(&fds);
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".sipcluster.cdr"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
