//! Where jobs are published: straight to their queue through the jobs exchange, into the delay
//! ladder at the level their delay enters, or to the dead-letter exchange. Both services publish
//! jobs, so the exchange names are built here, once per service, not per job.

use jobpipe_proto::{
    delay::{LEVELS, LadderDelay},
    names::QueueName,
    topology::Topology,
};
use lapin::types::ShortString;

/// An exchange and a routing key.
pub type Route = (ShortString, ShortString);

/// Which of the exchanges a service publishes to: what its broker user needs write access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publishes {
    /// Submitted jobs: the jobs exchange and the delay ladder (the producer).
    Jobs,
    /// Retries and dead letters: the delay ladder and the dead-letter exchange (consumers).
    Failures,
}

/// The exchanges a job can be published to, named once.
#[derive(Debug, Clone)]
pub struct Routes {
    jobs_exchange: ShortString,
    dead_exchange: ShortString,
    /// `{prefix}.delay.NN`, indexed by level.
    delay_levels: Vec<ShortString>,
}

impl Routes {
    /// The exchanges of `topology`.
    pub fn new(topology: &Topology) -> Self {
        Self {
            jobs_exchange: topology.jobs_exchange().into(),
            dead_exchange: topology.dead_exchange().into(),
            delay_levels: (0..LEVELS)
                .map(|level| topology.delay_level(level).into())
                .collect(),
        }
    }

    /// The route of a job for `queue`: now, or through the ladder after `delay`. The ladder
    /// routes a delayed job whatever its destination: check that the queue exists first.
    pub fn job(&self, queue: &QueueName, delay: Option<LadderDelay>) -> Route {
        match delay {
            None => (self.jobs_exchange.clone(), queue.as_str().into()),
            Some(delay) => (
                self.delay_levels[usize::from(delay.entry_level())].clone(),
                delay.routing_key(queue).into(),
            ),
        }
    }

    /// Every exchange a service that `publishes` this may publish to.
    pub fn exchanges(&self, publishes: Publishes) -> Vec<String> {
        let first = match publishes {
            Publishes::Jobs => &self.jobs_exchange,
            Publishes::Failures => &self.dead_exchange,
        };
        std::iter::once(first)
            .chain(&self.delay_levels)
            .map(|exchange| exchange.to_string())
            .collect()
    }

    /// The route of a job given up on `queue`, to `{prefix}.{queue}.dead`.
    pub fn dead_letter(&self, queue: &QueueName) -> Route {
        (self.dead_exchange.clone(), queue.as_str().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobpipe_proto::names::Prefix;
    use std::time::Duration;

    #[test]
    fn jobs_go_to_their_queue_or_enter_the_ladder_at_their_delays_highest_bit() {
        let topology = Topology::new(Prefix::try_new("p").unwrap());
        let routes = Routes::new(&topology);
        let queue = QueueName::default_queue();
        let delay = |secs| LadderDelay::from_duration(Duration::from_secs(secs)).unwrap();
        let cases = [
            (None, "p.jobs", "default".to_owned()),
            (
                delay(1),
                "p.delay.00",
                delay(1).unwrap().routing_key(&queue),
            ),
            (
                delay(10),
                "p.delay.03",
                delay(10).unwrap().routing_key(&queue),
            ),
        ];
        for (delay, exchange, routing_key) in cases {
            let (got_exchange, got_key) = routes.job(&queue, delay);
            assert_eq!(
                (got_exchange.as_str(), got_key.as_str()),
                (exchange, routing_key.as_str()),
                "{delay:?}"
            );
        }
        let (exchange, key) = routes.dead_letter(&queue);
        assert_eq!((exchange.as_str(), key.as_str()), ("p.dead", "default"));
    }
}
