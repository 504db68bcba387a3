//! `jobpipe health`: the producer's gRPC health, as probes see it.

use crate::{Error, Failure, target::Target};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Prints SERVING, NOT_SERVING or UNKNOWN; succeeds only when serving. Not serving is worth
/// asking again later (the broker link is down, or the producer drains and another serves).
pub(crate) async fn run(target: &Target) -> Result<(), Error> {
    let mut client = HealthClient::new(target.connect().await?);
    let request = HealthCheckRequest {
        service: "jobpipe.v1.JobService".into(),
    };
    let status = target
        .call("Health.Check", client.check(request))
        .await?
        .status();
    out!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        return Ok(());
    }
    Err(Error::new(
        Failure::Retryable,
        format!(
            "the producer at {} is not serving: {}",
            target.addr,
            status.as_str_name()
        ),
    ))
}
