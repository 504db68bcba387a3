//! Declares a topology [`Plan`] idempotently, and turns the broker's refusal of a declaration into
//! an error that names the object and the argument that differ.

use futures::future::join_all;
use jobpipe_proto::topology::{Destination, ExchangeKind, Plan};
use lapin::{
    Channel,
    options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

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
            .map_err(|error| refusal(format!("exchange '{}'", exchange.name), &error))
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
            .map_err(|error| refusal(format!("queue '{}'", queue.name), &error))
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
        _ => refusal(object, error),
    }
}

fn refusal(object: String, error: &lapin::Error) -> TopologyError {
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
