//! `jobpipe broker-permissions`: the `rabbitmqctl set_permissions` commands that give each broker
//! user of an installation exactly what its part needs (see `Topology::permissions`).

use clap::Args;
use jobpipe_proto::{
    names::{Prefix, QueueName},
    topology::{Permissions, Role, Topology},
};

/// The installation and its users.
#[derive(Debug, Args)]
pub(crate) struct PermissionsArgs {
    /// The installation's `topology.prefix`.
    #[arg(long, default_value = "jobpipe", value_parser = parse_prefix)]
    prefix: Prefix,
    /// A work queue (`topology.queues`); repeat for each.
    #[arg(long = "queue", default_value = "default", value_parser = parse_queue)]
    queues: Vec<QueueName>,
    /// The virtual host.
    #[arg(long, default_value = "/")]
    vhost: String,
    /// The user of the topology job (`jobpipe-producer --declare-topology`).
    #[arg(long, default_value = "jobpipe-topology")]
    topology_user: String,
    /// The producers' user.
    #[arg(long, default_value = "jobpipe-producer")]
    producer_user: String,
    /// The consumers' user.
    #[arg(long, default_value = "jobpipe-consumer")]
    consumer_user: String,
}

fn parse_prefix(text: &str) -> Result<Prefix, String> {
    Prefix::try_new(text).map_err(|error| error.to_string())
}

fn parse_queue(text: &str) -> Result<QueueName, String> {
    QueueName::try_new(text).map_err(|error| error.to_string())
}

/// Prints the commands, one per user.
pub(crate) fn run(args: &PermissionsArgs) -> Result<(), crate::Error> {
    let topology = Topology::new(args.prefix.clone());
    let queues: Vec<&str> = args.queues.iter().map(QueueName::as_str).collect();
    out!(
        "# Broker users of the jobpipe installation '{}' (queues: {}).\n\
         # The services run with topology.declare = false: the topology job declares.\n\
         # Regenerate after changing the prefix or the queues.",
        args.prefix,
        queues.join(", ")
    );
    for (role, user) in [
        (Role::Topology, &args.topology_user),
        (Role::Producer, &args.producer_user),
        (Role::Consumer, &args.consumer_user),
    ] {
        let Permissions {
            configure,
            write,
            read,
        } = topology.permissions(role, &args.queues);
        out!(
            "rabbitmqctl set_permissions -p {} {} {} {} {}",
            quoted(&args.vhost),
            quoted(user),
            quoted(&configure),
            quoted(&write),
            quoted(&read)
        );
    }
    Ok(())
}

/// `text` as one POSIX shell word.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_any_text_as_one_shell_word() {
        let cases = [
            ("/", "'/'"),
            (r"^jp\.(jobs)$", r"'^jp\.(jobs)$'"),
            ("it's", r"'it'\''s'"),
        ];
        for (text, expected) in cases {
            assert_eq!(quoted(text), expected, "{text}");
        }
    }
}
