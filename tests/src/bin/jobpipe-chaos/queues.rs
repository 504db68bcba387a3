//! The run's queues as RabbitMQ lists them (`rabbitmqctl list_queues`): what the drain, the
//! runbook, the fault injector and the failure report read.

use jobpipe_tests::node::Node;

/// Each queue of the run (its name starts with `prefix`) as its name followed by `columns`, as
/// `node` lists them. A row may be short (a count a recovering queue cannot give); a node that
/// is down lists nothing.
pub(crate) async fn list(node: &Node, prefix: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["list_queues", "name"];
    args.extend_from_slice(columns);
    args.push("--quiet");
    (node.rabbitmqctl(&args).await.lines())
        .filter(|line| line.starts_with(prefix))
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

/// Whether a queue's `online` member list holds every one of its `members`.
pub(crate) fn all_online(members: &str, online: &str) -> bool {
    names(members) == names(online)
}

/// The node names in a member list (`[a@h, b@h]`), sorted.
fn names(listed: &str) -> Vec<&str> {
    let mut names: Vec<&str> = (listed.trim().trim_start_matches('[').trim_end_matches(']'))
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use super::{all_online, names};

    #[test]
    fn member_lists_compare_as_sets_of_names() {
        let cases = [
            ("[a@h, b@h, c@h]", vec!["a@h", "b@h", "c@h"]),
            ("[c@h, a@h]", vec!["a@h", "c@h"]),
            ("[]", vec![]),
            ("", vec![]),
        ];
        for (listed, expected) in cases {
            assert_eq!(names(listed), expected, "{listed:?}");
        }
        assert!(all_online("[a@h, b@h, c@h]", "[c@h, a@h, b@h]"));
        assert!(!all_online("[a@h, b@h, c@h]", "[a@h, b@h]"));
    }
}
