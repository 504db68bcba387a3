//! Broker I/O: the supervised connection, topology declaration and confirmed publishing.

pub mod config;
pub mod link;
pub mod publisher;
pub mod topology;

pub use config::{AmqpConfig, AmqpUrl, Secret, TopologyConfig};
pub use link::{Declare, Link, LinkError, LinkState, Session};
pub use publisher::{Pending, PublishError, Publisher};
