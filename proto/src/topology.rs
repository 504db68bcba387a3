//! The broker objects jobpipe uses, how they are named and how they are wired. The names are an
//! operator contract; this module only describes them (a [`Plan`]), the runtime declares them.
//!
//! ```text
//! {prefix}.jobs  --(routing key = queue)-->  {prefix}.{queue}  (quorum, delivery limit)
//!                                                 | broker dead-lettering (at-least-once)
//! {prefix}.dead  --(routing key = queue)-->  {prefix}.{queue}.dead
//!
//! {prefix}.delay.27 .. {prefix}.delay.00  (the delay ladder, see `delay`)
//!        --> {prefix}.delay.deliver --(#.queue)--> {prefix}.{queue}
//!                   | unroutable (queue deleted while the job waited)
//!                   +--> {prefix}.delay.unroutable
//! ```

use crate::{
    delay::{self, LEVELS},
    names::{Prefix, QueueName},
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use serde::Deserialize;

/// Names every broker object of one jobpipe installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: Prefix,
}

/// The queue type of work queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated and durable, with a delivery limit and at-least-once dead-lettering.
    #[default]
    Quorum,
    /// Single-node; dead-lettering is at-most-once and there is no delivery limit. For
    /// benchmarks and development, not for jobs that must not be lost.
    Classic,
}

/// How work queues are declared. Every service declaring a queue must agree on these, or the
/// broker refuses the second declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// The work queues' type.
    pub queue_type: QueueType,
    /// Deliveries of one message before the broker dead-letters it (quorum queues only): the
    /// backstop for a job that crashes its consumer every time.
    pub delivery_limit: u32,
    /// The most messages a work queue holds; further publishes are refused (nacked).
    pub max_length: Option<u64>,
}

/// Everything to declare, in dependency order: exchanges, then queues, then bindings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Exchanges to declare (all durable).
    pub exchanges: Vec<Exchange>,
    /// Queues to declare (all durable).
    pub queues: Vec<Queue>,
    /// Bindings to add once the exchanges and queues exist.
    pub bindings: Vec<Binding>,
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// Full name.
    pub name: String,
    /// Routing behaviour.
    pub kind: ExchangeKind,
    /// Declaration arguments.
    pub arguments: FieldTable,
}

/// The exchange types jobpipe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes on the exact routing key.
    Direct,
    /// Routes on routing-key patterns.
    Topic,
    /// Routes everything to every binding.
    Fanout,
}

/// A durable queue and its `x-` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    /// Full name.
    pub name: String,
    /// Declaration arguments.
    pub arguments: FieldTable,
}

/// The broker users of an installation, each allowed only what its part does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Declares the topology (a deploy job): every object of it, nothing else.
    Topology,
    /// Publishes submitted jobs to the jobs exchange and the delay ladder.
    Producer,
    /// Consumes the work queues and publishes retries and dead letters.
    Consumer,
}

/// RabbitMQ permissions on one virtual host, as `rabbitmqctl set_permissions` takes them: a
/// regular expression per kind of access, over object names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Create, change and delete objects.
    pub configure: String,
    /// Publish to exchanges (and bind queues or exchanges as destinations).
    pub write: String,
    /// Consume from queues (and bind exchanges as sources).
    pub read: String,
}

/// A binding from an exchange to a queue or to another exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The exchange messages come from.
    pub source: String,
    /// Where matching messages go.
    pub destination: Destination,
    /// The routing key or pattern.
    pub routing_key: String,
}

/// The far end of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A queue, by full name.
    Queue(String),
    /// An exchange, by full name.
    Exchange(String),
}

impl Topology {
    /// The topology of the installation whose names start with `prefix`.
    pub fn new(prefix: Prefix) -> Self {
        Self { prefix }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// `{prefix}.jobs`: the direct exchange jobs are submitted to; routing key = queue name.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// `{prefix}.{queue}`: the quorum queue consumers take `queue`'s jobs from.
    pub fn work_queue(&self, queue: &QueueName) -> String {
        format!("{}.{queue}", self.prefix)
    }

    /// `{prefix}.dead`: the direct exchange dead-lettered jobs go through; routing key = queue.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// `{prefix}.{queue}.dead`: where `queue`'s failed jobs wait for an operator.
    pub fn dead_queue(&self, queue: &QueueName) -> String {
        format!("{}.{queue}.dead", self.prefix)
    }

    /// `{prefix}.delay.NN`: level `level`'s exchange, and its queue, which holds messages
    /// 2^level seconds.
    pub fn delay_level(&self, level: u8) -> String {
        format!("{}.delay.{level:02}", self.prefix)
    }

    /// `{prefix}.delay.deliver`: below level 0, bound to each work queue with `#.<queue>`.
    pub fn delay_deliver_exchange(&self) -> String {
        format!("{}.delay.deliver", self.prefix)
    }

    /// `{prefix}.delay.unroutable`: the fanout exchange and queue catching delayed jobs whose
    /// queue no longer exists, so they neither vanish nor stall their level.
    pub fn delay_unroutable(&self) -> String {
        format!("{}.delay.unroutable", self.prefix)
    }

    /// What `role` needs for an installation serving `queues`, and nothing more. Services that
    /// only check the topology (`topology.declare = false`) need no configure access: a passive
    /// declaration needs none.
    pub fn permissions(&self, role: Role, queues: &[QueueName]) -> Permissions {
        // Only a dot has a meaning in a regular expression among the prefix's characters.
        let prefix = self.prefix.as_str().replace('.', r"\.");
        let queues = queues
            .iter()
            .map(QueueName::as_str)
            .collect::<Vec<_>>()
            .join("|");
        let none = || "^$".to_owned();
        match role {
            Role::Topology => {
                let every_object = format!(
                    r"^{prefix}\.(jobs|dead|delay\.([0-9]{{2}}|deliver|unroutable)|({queues})(\.dead)?)$"
                );
                Permissions {
                    configure: every_object.clone(),
                    write: every_object.clone(),
                    read: every_object,
                }
            }
            // Reading the dead-letter queues: the operations API lists, replays and purges them.
            Role::Producer => Permissions {
                configure: none(),
                write: format!(r"^{prefix}\.(jobs|delay\.[0-9]{{2}})$"),
                read: format!(r"^{prefix}\.({queues})\.dead$"),
            },
            Role::Consumer => Permissions {
                configure: none(),
                write: format!(r"^{prefix}\.(dead|delay\.[0-9]{{2}})$"),
                read: format!(r"^{prefix}\.({queues})$"),
            },
        }
    }

    /// The objects serving `queues`, declared with `options`: the jobs and dead-letter
    /// exchanges, each queue with its dead queue, and the delay ladder.
    pub fn plan(&self, queues: &[QueueName], options: &QueueOptions) -> Plan {
        let mut plan = Plan {
            exchanges: vec![
                exchange(self.jobs_exchange(), ExchangeKind::Direct),
                exchange(self.dead_exchange(), ExchangeKind::Direct),
            ],
            ..Plan::default()
        };
        self.plan_ladder(&mut plan, options.queue_type);
        for queue in queues {
            plan.queues.push(Queue {
                name: self.work_queue(queue),
                arguments: self.work_queue_arguments(queue, options),
            });
            plan.queues.push(Queue {
                name: self.dead_queue(queue),
                arguments: type_argument(options.queue_type),
            });
            plan.bindings.push(Binding {
                source: self.jobs_exchange(),
                destination: Destination::Queue(self.work_queue(queue)),
                routing_key: queue.to_string(),
            });
            plan.bindings.push(Binding {
                source: self.dead_exchange(),
                destination: Destination::Queue(self.dead_queue(queue)),
                routing_key: queue.to_string(),
            });
            plan.bindings.push(Binding {
                source: self.delay_deliver_exchange(),
                destination: Destination::Queue(self.work_queue(queue)),
                routing_key: delay::deliver_pattern(queue),
            });
        }
        plan
    }

    /// The 28 levels, from the top down, then the delivery exchange and its catch-all.
    fn plan_ladder(&self, plan: &mut Plan, queue_type: QueueType) {
        for level in (0..LEVELS).rev() {
            let name = self.delay_level(level);
            let below = match level {
                0 => self.delay_deliver_exchange(),
                _ => self.delay_level(level - 1),
            };
            let mut arguments = type_argument(queue_type);
            arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(1000 << level),
            );
            // Expired messages fall to the level below with their routing key unchanged.
            arguments.insert("x-dead-letter-exchange".into(), text(&below));
            if queue_type == QueueType::Quorum {
                arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
                arguments.insert("x-overflow".into(), text("reject-publish"));
            }
            plan.exchanges
                .push(exchange(name.clone(), ExchangeKind::Topic));
            plan.queues.push(Queue {
                name: name.clone(),
                arguments,
            });
            plan.bindings.push(Binding {
                source: name.clone(),
                destination: Destination::Queue(name.clone()),
                routing_key: delay::hold_pattern(level),
            });
            plan.bindings.push(Binding {
                source: name,
                destination: Destination::Exchange(below),
                routing_key: delay::pass_pattern(level),
            });
        }
        let mut deliver = exchange(self.delay_deliver_exchange(), ExchangeKind::Topic);
        deliver
            .arguments
            .insert("alternate-exchange".into(), text(&self.delay_unroutable()));
        plan.exchanges.push(deliver);
        plan.exchanges
            .push(exchange(self.delay_unroutable(), ExchangeKind::Fanout));
        plan.queues.push(Queue {
            name: self.delay_unroutable(),
            arguments: type_argument(queue_type),
        });
        plan.bindings.push(Binding {
            source: self.delay_unroutable(),
            destination: Destination::Queue(self.delay_unroutable()),
            routing_key: String::new(),
        });
    }

    fn work_queue_arguments(&self, queue: &QueueName, options: &QueueOptions) -> FieldTable {
        let mut arguments = type_argument(options.queue_type);
        arguments.insert("x-dead-letter-exchange".into(), text(&self.dead_exchange()));
        // Messages arrive with routing keys of the delay ladder too; dead-letter under the
        // queue's own name so they reach its dead queue.
        arguments.insert("x-dead-letter-routing-key".into(), text(queue.as_str()));
        if options.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(options.delivery_limit.into()),
            );
            // At-least-once dead-lettering needs reject-publish overflow; with drop-head the
            // broker silently falls back to at-most-once.
            arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        }
        arguments.insert("x-overflow".into(), text("reject-publish"));
        if let Some(max) = options.max_length {
            arguments.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::try_from(max).unwrap_or(i64::MAX)),
            );
        }
        arguments
    }
}

fn exchange(name: String, kind: ExchangeKind) -> Exchange {
    Exchange {
        name,
        kind,
        arguments: FieldTable::default(),
    }
}

fn type_argument(queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    let name = match queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    arguments.insert("x-queue-type".into(), text(name));
    arguments
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::new(Prefix::try_new("jp").unwrap())
    }

    fn options(queue_type: QueueType) -> QueueOptions {
        QueueOptions {
            queue_type,
            delivery_limit: 5,
            max_length: Some(100),
        }
    }

    #[test]
    fn names_follow_the_contract() {
        let t = topology();
        let q = QueueName::try_new("emails").unwrap();
        let cases = [
            (t.jobs_exchange(), "jp.jobs"),
            (t.work_queue(&q), "jp.emails"),
            (t.dead_exchange(), "jp.dead"),
            (t.dead_queue(&q), "jp.emails.dead"),
        ];
        for (name, expected) in cases {
            assert_eq!(name, expected);
        }
    }

    #[test]
    fn work_queues_dead_letter_at_least_once() {
        let q = QueueName::default_queue();
        let plan = topology().plan(std::slice::from_ref(&q), &options(QueueType::Quorum));
        let work = plan.queues.iter().find(|q| q.name == "jp.default").unwrap();
        let args = work.arguments.inner();
        let expected = [
            ("x-queue-type", text("quorum")),
            ("x-delivery-limit", AMQPValue::LongLongInt(5)),
            ("x-dead-letter-exchange", text("jp.dead")),
            ("x-dead-letter-routing-key", text("default")),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
            ("x-max-length", AMQPValue::LongLongInt(100)),
        ];
        for (key, value) in expected {
            assert_eq!(args.get(key), Some(&value), "{key}");
        }
        assert!(plan.queues.iter().any(|q| q.name == "jp.default.dead"));
        for binding in [
            Binding {
                source: "jp.jobs".into(),
                destination: Destination::Queue("jp.default".into()),
                routing_key: "default".into(),
            },
            Binding {
                source: "jp.dead".into(),
                destination: Destination::Queue("jp.default.dead".into()),
                routing_key: "default".into(),
            },
            Binding {
                source: "jp.delay.deliver".into(),
                destination: Destination::Queue("jp.default".into()),
                routing_key: "#.default".into(),
            },
        ] {
            assert!(plan.bindings.contains(&binding), "{binding:?}");
        }
    }

    #[test]
    fn the_ladder_falls_level_by_level_to_delivery() {
        let plan = topology().plan(&[], &options(QueueType::Quorum));
        let level = |l: u8| {
            plan.queues
                .iter()
                .find(|q| q.name == format!("jp.delay.{l:02}"))
                .unwrap()
        };
        let cases = [
            (27, 134_217_728_000, "jp.delay.26"),
            (3, 8000, "jp.delay.02"),
            (0, 1000, "jp.delay.deliver"),
        ];
        for (l, ttl, below) in cases {
            let args = level(l).arguments.inner();
            assert_eq!(
                args.get("x-message-ttl"),
                Some(&AMQPValue::LongLongInt(ttl)),
                "level {l}"
            );
            assert_eq!(
                args.get("x-dead-letter-exchange"),
                Some(&text(below)),
                "level {l}"
            );
            assert_eq!(
                args.get("x-dead-letter-strategy"),
                Some(&text("at-least-once"))
            );
            assert!(
                !args.contains_key("x-dead-letter-routing-key"),
                "keys travel unchanged"
            );
        }
        let deliver = plan
            .exchanges
            .iter()
            .find(|e| e.name == "jp.delay.deliver")
            .unwrap();
        assert_eq!(
            deliver.arguments.inner().get("alternate-exchange"),
            Some(&text("jp.delay.unroutable"))
        );
        assert_eq!(plan.queues.len(), 28 + 1);
    }

    #[test]
    fn classic_queues_carry_no_quorum_arguments() {
        let plan = topology().plan(&[QueueName::default_queue()], &options(QueueType::Classic));
        let work = plan.queues.iter().find(|q| q.name == "jp.default").unwrap();
        let args = work.arguments.inner();
        assert_eq!(args.get("x-queue-type"), Some(&text("classic")));
        assert!(!args.contains_key("x-delivery-limit"));
        assert!(!args.contains_key("x-dead-letter-strategy"));
    }

    #[test]
    fn each_role_gets_only_its_objects() {
        let queues = [
            QueueName::default_queue(),
            QueueName::try_new("emails").unwrap(),
        ];
        let every_object =
            r"^jp\.(jobs|dead|delay\.([0-9]{2}|deliver|unroutable)|(default|emails)(\.dead)?)$";
        let cases = [
            (Role::Topology, every_object, every_object, every_object),
            (
                Role::Producer,
                "^$",
                r"^jp\.(jobs|delay\.[0-9]{2})$",
                r"^jp\.(default|emails)\.dead$",
            ),
            (
                Role::Consumer,
                "^$",
                r"^jp\.(dead|delay\.[0-9]{2})$",
                r"^jp\.(default|emails)$",
            ),
        ];
        for (role, configure, write, read) in cases {
            let expected = Permissions {
                configure: configure.to_owned(),
                write: write.to_owned(),
                read: read.to_owned(),
            };
            assert_eq!(topology().permissions(role, &queues), expected, "{role:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the prefix and queues: the topology role reaches every object and the
        /// services exactly the ones they use, and none reaches another installation's objects
        /// (whose prefix starts with this one's).
        #[test]
        fn permissions_match_exactly_the_objects_each_role_uses(
            prefix in "[a-z0-9][a-z0-9_.-]{0,20}",
            queues in proptest::collection::btree_set("[a-z0-9][a-z0-9_-]{0,10}", 1..4),
        ) {
            let topology = Topology::new(Prefix::try_new(prefix.clone()).unwrap());
            let queues: Vec<QueueName> =
                queues.into_iter().map(|q| QueueName::try_new(q).unwrap()).collect();
            let plan = topology.plan(&queues, &options(QueueType::Quorum));
            let names: Vec<String> = plan.exchanges.iter().map(|e| e.name.clone())
                .chain(plan.queues.iter().map(|q| q.name.clone()))
                .collect();
            let role = |role| {
                let Permissions { configure, write, read } = topology.permissions(role, &queues);
                [configure, write, read].map(|pattern| regex::Regex::new(&pattern).unwrap())
            };
            let ([top_configure, top_write, top_read], [producer_configure, producer_write, producer_read], [consumer_configure, consumer_write, consumer_read]) =
                (role(Role::Topology), role(Role::Producer), role(Role::Consumer));
            let ladder = |name: &str| (0..LEVELS).any(|level| name == topology.delay_level(level));
            let work = |name: &str| queues.iter().any(|q| name == topology.work_queue(q));
            let dead = |name: &str| queues.iter().any(|q| name == topology.dead_queue(q));
            for name in &names {
                for pattern in [&top_configure, &top_write, &top_read] {
                    proptest::prop_assert!(pattern.is_match(name), "{pattern} {name}");
                }
                for pattern in [&producer_configure, &consumer_configure] {
                    proptest::prop_assert!(!pattern.is_match(name), "{pattern} {name}");
                }
                let publishes_jobs = *name == topology.jobs_exchange() || ladder(name);
                let publishes_failures = *name == topology.dead_exchange() || ladder(name);
                proptest::prop_assert_eq!(producer_write.is_match(name), publishes_jobs);
                proptest::prop_assert_eq!(consumer_write.is_match(name), publishes_failures);
                proptest::prop_assert_eq!(consumer_read.is_match(name), work(name));
                proptest::prop_assert_eq!(producer_read.is_match(name), dead(name));
            }
            for other in [format!("{prefix}.Z"), format!("{prefix}Z")] {
                let other = Topology::new(Prefix::try_new(other).unwrap());
                let plan = other.plan(&queues, &options(QueueType::Quorum));
                for name in plan.exchanges.iter().map(|e| &e.name).chain(plan.queues.iter().map(|q| &q.name)) {
                    for pattern in [&top_configure, &producer_write, &producer_read, &consumer_write, &consumer_read] {
                        proptest::prop_assert!(!pattern.is_match(name), "{pattern} {name}");
                    }
                }
            }
        }
    }
}
