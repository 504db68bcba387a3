//! Generates the gRPC code and the descriptor set (for server reflection) from `jobpipe/v1/*.proto`
//! with `protox`, so no system `protoc` is needed.

use prost::Message;
use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "jobpipe/v1/jobs.proto",
    "jobpipe/v1/worker.proto",
    "jobpipe/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("jobpipe_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Payloads decode as `Bytes` slices of the request buffer: no copy per job.
    tonic_prost_build::configure()
        .bytes(".jobpipe.v1.JobSpec.payload")
        .bytes(".jobpipe.v1.HandleRequest.payload")
        .bytes(".jobpipe.v1.DeadLetter.payload")
        .compile_fds(descriptors)?;
    Ok(())
}
