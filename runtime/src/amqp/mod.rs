//! Broker I/O: the supervised connection, topology declaration and confirmed publishing.

pub mod config;
pub mod link;
pub mod publisher;
pub mod topology;

pub use config::{AmqpConfig, AmqpUrl, TopologyConfig};
pub use link::{Link, LinkError, LinkState, Session};
pub use publisher::{Pending, PublishError, Publisher};
