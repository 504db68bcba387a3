//! The Helm chart, checked offline (no cluster here): it lints, renders for the default and a
//! production-like values file, every manifest validates against Kubernetes 1.30's schemas, and
//! the properties that matter in production hold on what was rendered.

use jobpipe_tests::{
    process::output,
    tools::{project_tool, venv_tool},
    within,
};
use serde_json::Value;
use std::{path::PathBuf, process::Output, time::Duration};
use tokio::process::Command;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/jobpipe")
}

async fn run(command: &mut Command, what: &str) -> Output {
    within(Duration::from_secs(60), what, command.output())
        .await
        .unwrap_or_else(|error| panic!("{what}: {error}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `helm template` with `values` files; the rendered manifests as YAML text.
async fn render(values: &[&str], extra: &[&str]) -> Result<String, String> {
    let mut command = Command::new(project_tool("helm"));
    command
        .args(["template", "jp", "--namespace", "jobs"])
        .arg(chart());
    for file in values {
        command.arg("-f").arg(chart().join(file));
    }
    command.args(extra);
    let rendered = run(&mut command, "helm template").await;
    if rendered.status.success() {
        Ok(String::from_utf8_lossy(&rendered.stdout).into_owned())
    } else {
        Err(text(&rendered))
    }
}

/// The rendered documents as JSON (PyYAML from the tools venv does the YAML).
async fn documents(yaml: &str) -> Vec<Value> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().expect("stdin");
    // Written while python runs, and bounded with it: a stuck python cannot block the write.
    let write = async move {
        stdin.write_all(yaml.as_bytes()).await.expect("write");
    };
    let ((), out) = within(Duration::from_secs(30), "yaml to json", async {
        tokio::join!(write, child.wait_with_output())
    })
    .await;
    let out = out.expect("python ran");
    serde_json::from_slice(&out.stdout).expect("JSON documents")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, suffix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("no {kind} *{suffix}"))
}

/// Every pod spec in the rendered objects, with where it came from.
fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let name = format!(
                "{}/{}",
                d["kind"].as_str()?,
                d["metadata"]["name"].as_str()?
            );
            match d["kind"].as_str()? {
                "Pod" => Some((name, &d["spec"])),
                "Deployment" | "Job" => Some((name, &d["spec"]["template"]["spec"])),
                _ => None,
            }
        })
        .collect()
}

async fn lint_and_validate(values: &[&str]) -> Vec<Value> {
    let mut lint = Command::new(project_tool("helm"));
    lint.args(["lint", "--strict"]).arg(chart());
    for file in values {
        lint.arg("-f").arg(chart().join(file));
    }
    let linted = run(&mut lint, "helm lint").await;
    assert!(
        linted.status.success(),
        "helm lint {values:?}:\n{}",
        text(&linted)
    );

    let yaml = render(values, &[]).await.expect("renders");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).expect("write");
    let validated = run(
        Command::new(venv_tool("kubernetes-validate"))
            .args(["--strict", "-k", "1.30.0"])
            .arg(&file),
        "kubernetes-validate",
    )
    .await;
    let report = text(&validated);
    assert!(
        validated.status.success(),
        "kubernetes-validate {values:?}:\n{report}"
    );
    assert!(!report.contains("ERROR"), "{report}");
    documents(&yaml).await
}

#[tokio::test]
async fn the_chart_renders_and_validates_for_default_and_production_values() {
    for values in [&[][..], &["ci/production-values.yaml"][..]] {
        let docs = lint_and_validate(values).await;
        assert!(of_kind(&docs, "Deployment").len() == 2, "{values:?}");
        for doc in &docs {
            let labels = &doc["metadata"]["labels"];
            for label in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/managed-by",
            ] {
                assert!(
                    labels[label].is_string(),
                    "{} {} lacks {label}",
                    doc["kind"],
                    doc["metadata"]["name"]
                );
            }
        }
    }
}

#[tokio::test]
async fn every_container_runs_under_the_restricted_pod_security_profile() {
    for values in [&[][..], &["ci/production-values.yaml"][..]] {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        let specs = pod_specs(&docs);
        assert!(specs.len() >= 3, "{values:?}: {} pod specs", specs.len());
        for (name, spec) in specs {
            let pod = &spec["securityContext"];
            assert_eq!(pod["runAsNonRoot"], true, "{name}");
            assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{name}");
            assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
            for container in spec["containers"].as_array().expect("containers") {
                let c = &container["securityContext"];
                let who = format!("{name} container {}", container["name"]);
                assert_eq!(c["allowPrivilegeEscalation"], false, "{who}");
                assert_eq!(c["readOnlyRootFilesystem"], true, "{who}");
                assert_eq!(c["runAsNonRoot"], true, "{who}");
                assert_eq!(
                    c["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{who}"
                );
                assert!(
                    c["runAsUser"].as_u64().is_some_and(|uid| uid > 0),
                    "{who}: numeric non-root user"
                );
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{who}: memory limit"
                );
            }
        }
    }
}

#[tokio::test]
async fn probes_point_at_ports_that_exist_and_grace_periods_cover_the_drain() {
    let docs = documents(&render(&[], &[]).await.expect("renders")).await;
    for deployment in of_kind(&docs, "Deployment") {
        let spec = &deployment["spec"]["template"]["spec"];
        for container in spec["containers"].as_array().expect("containers") {
            let ports = container["ports"].as_array().expect("ports");
            let exists = |port: &Value| {
                ports
                    .iter()
                    .any(|p| &p["name"] == port || &p["containerPort"] == port)
            };
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let probe = &container[probe];
                let port = if probe["grpc"].is_object() {
                    &probe["grpc"]["port"]
                } else {
                    &probe["httpGet"]["port"]
                };
                assert!(
                    exists(port),
                    "{} probe port {port} is not a container port",
                    deployment["metadata"]["name"]
                );
            }
        }
    }
    let producer = named(&docs, "Deployment", "-producer");
    let container = &producer["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["grpc"]["service"],
        "jobpipe.v1.JobService"
    );
    assert_eq!(container["livenessProbe"]["grpc"]["service"], "");
    assert!(container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64() > Some(0));
    let service = named(&docs, "Service", "-producer");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["appProtocol"] == "grpc"),
        "the gRPC port says appProtocol: grpc"
    );

    // The consumer's own grace period comes from the ConfigMap; the pod must outlast it.
    for values in [&[][..], &["ci/production-values.yaml"][..]] {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        let config = named(&docs, "ConfigMap", "jp-jobpipe");
        let grace = |toml: &str| -> u64 {
            toml.lines()
                .find_map(|l| l.strip_prefix("grace_period = \""))
                .and_then(|v| v.trim_end_matches("s\"").parse().ok())
                .expect("grace_period")
        };
        for (component, file) in [
            ("-consumer", "consumer.toml"),
            ("-producer", "producer.toml"),
        ] {
            let deployment = named(&docs, "Deployment", component);
            let pod_grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("terminationGracePeriodSeconds");
            let drain = grace(config["data"][file].as_str().expect("config"));
            assert!(
                pod_grace > drain,
                "{component}: pod grace {pod_grace}s must exceed the drain {drain}s"
            );
        }
    }
}

#[tokio::test]
async fn the_configmap_parses_with_the_services_own_config_check() {
    for values in [&[][..], &["ci/production-values.yaml"][..]] {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        let config = named(&docs, "ConfigMap", "jp-jobpipe");
        let dir = tempfile::tempdir().expect("temp dir");
        for (binary, file) in [
            ("jobpipe-producer", "producer.toml"),
            ("jobpipe-consumer", "consumer.toml"),
        ] {
            let path = dir.path().join(file);
            std::fs::write(&path, config["data"][file].as_str().expect("file")).expect("write");
            let path = path.to_string_lossy().into_owned();
            let (status, said) = output(binary, &["--check-config", "--config", &path], &[]).await;
            assert!(status.success(), "{binary} {values:?}: {said}");
        }
    }
}

#[tokio::test]
async fn autoscaling_disruption_budgets_and_the_topology_job_follow_the_values() {
    let defaults = documents(&render(&[], &[]).await.expect("renders")).await;
    assert!(
        of_kind(&defaults, "ScaledObject").is_empty()
            && of_kind(&defaults, "HorizontalPodAutoscaler").is_empty()
    );
    assert_eq!(
        of_kind(&defaults, "PodDisruptionBudget").len(),
        2,
        "replicas > 1 get a PDB"
    );
    assert!(
        of_kind(&defaults, "Job").is_empty(),
        "the services declare by default"
    );
    assert_eq!(
        named(&defaults, "ServiceAccount", "jp-jobpipe")["automountServiceAccountToken"],
        false
    );

    let production = documents(
        &render(&["ci/production-values.yaml"], &[])
            .await
            .expect("renders"),
    )
    .await;
    let scaled = named(&production, "ScaledObject", "-consumer");
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    assert_eq!(triggers.len(), 3, "one trigger per work queue");
    assert!(triggers.iter().all(|t| t["type"] == "rabbitmq"
        && t["metadata"]["mode"] == "QueueLength"
        && t["metadata"]["protocol"] == "amqp"));
    assert_eq!(triggers[0]["metadata"]["queueName"], "prod.default");
    let consumer = named(&production, "Deployment", "-consumer");
    assert!(
        consumer["spec"]["replicas"].is_null(),
        "KEDA owns the replica count"
    );
    let hpas = of_kind(&production, "HorizontalPodAutoscaler");
    assert!(
        hpas.iter()
            .all(|h| h["spec"]["scaleTargetRef"]["name"] != consumer["metadata"]["name"])
    );
    assert_eq!(of_kind(&production, "NetworkPolicy").len(), 1);
    assert_eq!(of_kind(&production, "ServiceMonitor").len(), 1);
    let job = named(&production, "Job", "-topology");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    let config = named(&production, "ConfigMap", "jp-jobpipe");
    assert!(
        config["data"]["consumer.toml"]
            .as_str()
            .expect("toml")
            .contains("declare = false")
    );

    // The `helm test` pod is selected by the NetworkPolicy; it must still reach the producer.
    let policy = of_kind(&production, "NetworkPolicy")[0];
    let test_pod = named(&production, "Pod", "-test-health");
    let selected = |selector: &Value, labels: &Value| {
        selector["matchLabels"]
            .as_object()
            .is_some_and(|wanted| wanted.iter().all(|(k, v)| &labels[k] == v))
    };
    assert!(selected(
        &policy["spec"]["podSelector"],
        &test_pod["metadata"]["labels"]
    ));
    let grpc_port = serde_json::json!(50051);
    let producer_labels =
        &named(&production, "Deployment", "-producer")["spec"]["template"]["metadata"]["labels"];
    let egress = policy["spec"]["egress"].as_array().expect("egress");
    assert!(
        egress.iter().any(|rule| {
            rule["ports"]
                .as_array()
                .is_some_and(|ports| ports.iter().any(|p| p["port"] == grpc_port))
                && rule["to"].as_array().is_some_and(|to| {
                    to.iter()
                        .any(|peer| selected(&peer["podSelector"], producer_labels))
                })
        }),
        "the test pod may call the producer: {egress:#?}"
    );
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress");
    assert!(
        ingress.iter().any(|rule| {
            rule["ports"]
                .as_array()
                .is_some_and(|ports| ports.iter().any(|p| p["port"] == grpc_port))
                && rule["from"].as_array().is_some_and(|from| {
                    from.iter()
                        .any(|peer| selected(&peer["podSelector"], &test_pod["metadata"]["labels"]))
                })
        }),
        "the producer admits the test pod: {ingress:#?}"
    );
    assert!(
        egress.iter().any(|rule| rule["ports"][0]["port"] == 5672),
        "the broker"
    );
    assert!(
        egress.iter().any(|rule| rule["ports"][0]["port"] == 53),
        "DNS"
    );
    assert!(
        egress.iter().any(|rule| rule["ports"][0]["port"] == 4317),
        "the OTLP collector"
    );

    for docs in [&defaults, &production] {
        let config = named(docs, "ConfigMap", "jp-jobpipe");
        let data = config["data"].to_string().to_lowercase();
        assert!(
            !data.contains("password"),
            "credentials stay in the Secret: {data}"
        );
        for deployment in of_kind(docs, "Deployment") {
            let checksum =
                &deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"];
            assert!(
                checksum.as_str().is_some_and(|c| c.len() == 64),
                "pods roll when the config changes: {checksum}"
            );
            let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
            assert!(
                env.contains("secretKeyRef"),
                "the password comes from the Secret"
            );
        }
    }

    let both = render(
        &[],
        &[
            "--set",
            "consumer.keda.enabled=true",
            "--set",
            "consumer.autoscaling.enabled=true",
        ],
    )
    .await
    .expect_err("an HPA and a ScaledObject on one Deployment");
    assert!(both.contains("must not both scale"), "{both}");
    let typo = render(&[], &["--set", "consumer.prefech=64"])
        .await
        .expect_err("unknown value");
    assert!(
        typo.contains("prefech"),
        "values.schema.json refuses unknown keys: {typo}"
    );
}
