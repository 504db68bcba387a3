//! The jobpipe wire contract, shared by every service and client: the gRPC API ([`v1`]), the
//! names of broker objects ([`topology`]) and headers ([`headers`]), the delay ladder's
//! arithmetic ([`delay`]), validated names ([`names`]), metadata rules ([`metadata`]), the rules
//! of every other job property, which both services apply ([`rules`]), how a job is written onto
//! an AMQP message ([`job`]), the
//! failure record a failed job carries ([`failure`]), and gRPC codes' names ([`status`]). Pure: no I/O happens here.

pub mod delay;
pub mod failure;
pub mod headers;
pub mod job;
pub mod metadata;
pub mod names;
pub mod rules;
pub mod status;
pub mod topology;

/// The generated `jobpipe.v1` gRPC types, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("jobpipe.v1");

    /// The encoded descriptors of `jobpipe/v1/*.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/jobpipe_descriptor.bin"));
}
