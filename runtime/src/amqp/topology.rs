//! Declares a topology [`Plan`] idempotently (or checks it exists), checks that this service's
//! user may publish where the service publishes, and turns the broker's refusals into errors that
//! name the object and the argument that differ, or the permission that is missing.

use futures::future::join_all;
use jobpipe_proto::topology::{Destination, ExchangeKind, Plan};
use lapin::{
    BasicProperties, Channel,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};

/// The routing key of the publish permission check. No binding of a jobpipe topology routes it:
/// no queue name has a colon (the jobs, dead-letter and delivery exchanges bind queue names), and
/// it has no dot (the ladder's patterns need one digit per level).
const PERMISSION_CHECK_KEY: &str = "jobpipe:permission-check";

/// The broker refused this service's user an operation (AMQP 403). RabbitMQ's text names the
/// object and the user (`access to exchange 'jobpipe.jobs' in vhost '/' refused for user
/// 'producer'`), not the permission: `needs` says which one the operation takes.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{detail} ({needs}): grant the user the permissions its part needs (README, \"Least \
     privilege on the broker\")"
)]
pub struct AccessRefused {
    /// The broker's explanation.
    pub detail: String,
    /// The operation and the permission it takes: `publishing needs write access`.
    pub needs: &'static str,
}

impl AccessRefused {
    /// The refusal `error` carries, if it is one, of an operation that `needs` a permission.
    pub fn from_error(error: &lapin::Error, needs: &'static str) -> Option<Self> {
        match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 403 => {
                let text = amqp.get_message().to_string();
                let detail = text.strip_prefix("ACCESS_REFUSED - ").unwrap_or(&text);
                Some(Self {
                    detail: detail.to_owned(),
                    needs,
                })
            }
            _ => None,
        }
    }
}

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// An object exists with other arguments than this service declares (AMQP 406).
    #[error(
        "{object} already exists with a different {argument}; the broker says: {detail}. \
         Make the configuration match, or delete the object if it holds nothing you need"
    )]
    Mismatch {
        /// The object, e.g. `queue 'jobpipe.default'`.
        object: String,
        /// The differing argument, e.g. `x-delivery-limit`.
        argument: String,
        /// The broker's explanation.
        detail: String,
    },
    /// An object this service only checks for does not exist (`topology.declare = false`).
    #[error(
        "{object} does not exist; this service only checks the topology (topology.declare = \
         false): declare it first (`jobpipe-producer --declare-topology`, or the chart's topology job)"
    )]
    Missing {
        /// The object, e.g. `queue 'jobpipe.default'`.
        object: String,
    },
    /// This service's user may not do something the service needs.
    #[error(transparent)]
    AccessRefused(#[from] AccessRefused),
    /// Any other failure while declaring.
    #[error("declaring {object} failed: {reason}")]
    Declare {
        /// The object being declared.
        object: String,
        /// What went wrong.
        reason: String,
    },
}

/// Declares every exchange, queue and binding of `plan` on `channel`. Safe to repeat: the broker
/// accepts an identical re-declaration.
pub async fn declare(channel: &Channel, plan: &Plan) -> Result<(), TopologyError> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    in_order(plan.exchanges.iter().map(|exchange| async move {
        let kind = match exchange.kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                durable_exchange,
                exchange.arguments.clone(),
            )
            .await
            .map_err(|error| {
                refusal(
                    format!("exchange '{}'", exchange.name),
                    "declaring an exchange needs configure access, and write access to its \
                     alternate exchange",
                    &error,
                )
            })
    }))
    .await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    in_order(plan.queues.iter().map(|queue| async move {
        channel
            .queue_declare(
                queue.name.as_str().into(),
                durable_queue,
                queue.arguments.clone(),
            )
            .await
            .map(drop)
            .map_err(|error| {
                refusal(
                    format!("queue '{}'", queue.name),
                    "declaring a queue needs configure and read access to it, and write access \
                     to its dead-letter exchange",
                    &error,
                )
            })
    }))
    .await?;
    in_order(plan.bindings.iter().map(|binding| async move {
        let bound = match &binding.destination {
            Destination::Queue(queue) => {
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        binding.source.as_str().into(),
                        binding.routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
            Destination::Exchange(exchange) => {
                channel
                    .exchange_bind(
                        exchange.as_str().into(),
                        binding.source.as_str().into(),
                        binding.routing_key.as_str().into(),
                        ExchangeBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
        };
        bound.map_err(|error| {
            refusal(
                format!("binding '{}' -> {:?}", binding.source, binding.destination),
                "binding needs read access to the source and write access to the destination",
                &error,
            )
        })
    }))
    .await
}

/// Checks that every object of `plan` exists, without creating or changing anything: for services
/// that must not declare (an operator or a deploy job owns the topology).
pub async fn verify(channel: &Channel, plan: &Plan) -> Result<(), TopologyError> {
    let passive_exchange = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    in_order(plan.exchanges.iter().map(|exchange| async move {
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                lapin::ExchangeKind::Direct,
                passive_exchange,
                FieldTable::default(),
            )
            .await
            .map_err(|error| absence(format!("exchange '{}'", exchange.name), &error))
    }))
    .await?;
    let passive_queue = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    in_order(plan.queues.iter().map(|queue| async move {
        channel
            .queue_declare(
                queue.name.as_str().into(),
                passive_queue,
                FieldTable::default(),
            )
            .await
            .map(drop)
            .map_err(|error| absence(format!("queue '{}'", queue.name), &error))
    }))
    .await
}

/// Checks that this service may publish to each of `exchanges`: publishes an empty, already
/// expired message to each, with a routing key no binding routes, and waits for the broker's
/// confirms. `channel` is put in confirm mode, and is closed by the broker if a publish is
/// refused ([`AccessRefused::from_error`] reads the error). A broker blocking publishers (a
/// resource alarm) answers nothing: callers bound the wait, on a connection they can give up.
pub async fn check_publish(channel: &Channel, exchanges: &[String]) -> Result<(), lapin::Error> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let published = join_all(exchanges.iter().map(|exchange| async move {
        channel
            .basic_publish(
                exchange.as_str().into(),
                PERMISSION_CHECK_KEY.into(),
                BasicPublishOptions::default(),
                &[],
                BasicProperties::default().with_expiration("0".into()),
            )
            .await?
            .await
            .map(drop)
    }))
    .await;
    published.into_iter().collect()
}

/// Sends a group of declarations at once and reports the first failure in plan order. They
/// pipeline on the channel, which the broker answers in order, so a reconnect costs three round
/// trips instead of one per object; the declarations after a refused one fail only because the
/// refusal closed the channel, the ones before it succeeded.
async fn in_order(
    steps: impl IntoIterator<Item = impl Future<Output = Result<(), TopologyError>>>,
) -> Result<(), TopologyError> {
    join_all(steps).await.into_iter().collect()
}

/// A passive declaration's failure: an object that is not there (404) is [`TopologyError::Missing`].
fn absence(object: String, error: &lapin::Error) -> TopologyError {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404 => {
            TopologyError::Missing { object }
        }
        _ => refusal(object, "a passive declaration needs no permission", error),
    }
}

fn refusal(object: String, needs: &'static str, error: &lapin::Error) -> TopologyError {
    if let Some(refused) = AccessRefused::from_error(error, needs) {
        return refused.into();
    }
    let text = match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => error.to_string(),
    };
    match parse_mismatch(&text) {
        Some((argument, detail)) => TopologyError::Mismatch {
            object,
            argument,
            detail,
        },
        None => TopologyError::Declare {
            object,
            reason: text,
        },
    }
}

/// Reads RabbitMQ's 406 text, e.g. `PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit'
/// for queue 'q' in vhost '/': received the value '5' of type 'signedint' but current is none`,
/// into the argument name and the part after the colon.
fn parse_mismatch(text: &str) -> Option<(String, String)> {
    let rest = text.split_once("inequivalent arg '")?.1;
    let (argument, rest) = rest.split_once('\'')?;
    let detail = rest.split_once(": ").map_or(rest, |(_, detail)| detail);
    Some((argument.to_owned(), detail.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_brokers_mismatch_text() {
        let cases = [
            (
                "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'jp.default' \
                 in vhost '/': received the value '5' of type 'signedint' but current is none",
                Some((
                    "x-delivery-limit",
                    "received the value '5' of type 'signedint' but current is none",
                )),
            ),
            (
                "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'jp.jobs' in \
                 vhost '/': received 'true' but current is 'false'",
                Some(("durable", "received 'true' but current is 'false'")),
            ),
            ("NOT_FOUND - no queue 'x' in vhost '/'", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_mismatch(text);
            assert_eq!(
                parsed.as_ref().map(|(a, d)| (a.as_str(), d.as_str())),
                expected,
                "{text}"
            );
        }
    }
}
