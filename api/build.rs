//! Generates the v1alpha messages and the PublicAPI server and client with
//! tonic-build, through protoc (Debian's protobuf-compiler; `$PROTOC` overrides).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/v1alpha.proto");
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/v1alpha.proto"], &["proto"])?;
    Ok(())
}
