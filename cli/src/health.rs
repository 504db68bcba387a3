//! `jobpipe health`: the producer's gRPC health, as probes see it.

use crate::target::Target;
use std::process::ExitCode;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Prints SERVING or NOT_SERVING; exits 0 only when serving.
pub(crate) async fn run(target: &Target) -> anyhow::Result<ExitCode> {
    let mut client = HealthClient::new(target.connect().await?);
    let status = client
        .check(HealthCheckRequest {
            service: "jobpipe.v1.JobService".into(),
        })
        .await?
        .into_inner()
        .status();
    out!("{}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
