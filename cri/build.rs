//! Generates the CRI runtime.v1 messages and the RuntimeService (and
//! ImageService) servers and
//! client with tonic-build, through protoc (Debian's protobuf-compiler;
//! `$PROTOC` overrides), as the rkt-api crate does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runtime_v1.proto");
    println!("cargo:rerun-if-changed=proto/image_v1.proto");
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/runtime_v1.proto", "proto/image_v1.proto"], &["proto"])?;
    Ok(())
}
