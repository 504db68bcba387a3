//! `jobpipe health`: the producer's gRPC health, as probes see it.

use anyhow::Context;
use std::process::ExitCode;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Prints SERVING or NOT_SERVING; exits 0 only when serving.
pub(crate) async fn run(addr: &str) -> anyhow::Result<ExitCode> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the producer at {addr}"))?;
    let mut client = HealthClient::new(channel);
    let status = client
        .check(HealthCheckRequest {
            service: "jobpipe.v1.JobService".into(),
        })
        .await?
        .into_inner()
        .status();
    println!("{}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
