//! Broker I/O: the supervised connection, topology declaration, where jobs are published, and
//! confirmed publishing.

pub mod config;
pub mod link;
pub mod publisher;
pub mod routes;
pub mod topology;

pub use config::{AmqpConfig, AmqpUrl, TopologyConfig};
pub use link::{Declare, Link, LinkError, LinkState, Session};
pub use publisher::{Pending, PublishError, Publisher};
pub use routes::{Publishes, Route, Routes};
pub use topology::AccessRefused;
