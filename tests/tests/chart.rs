//! The Helm chart, checked offline (no cluster here): it lints, renders for the default, a
//! production-like, a secured, a worker-sidecar and a custom-consumer values file, every manifest
//! validates against Kubernetes 1.30's schemas, and the properties that matter in production hold
//! on what was rendered: autoscaling on what the consumers really hold, scheduling fields on every
//! pod, disruption budgets that let unready pods go, and the sizing rule of deploy/README.md.

use jobpipe_tests::{
    certs::{Ca, CertDir},
    process::output,
    tools::{project_tool, venv_tool},
    within,
};
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};
use tokio::process::Command;

const PRODUCTION: &[&str] = &["ci/production-values.yaml"];
const SECURE: &[&str] = &["ci/secure-values.yaml"];
const WORKER: &[&str] = &["ci/worker-values.yaml"];
const CUSTOM_CONSUMER: &[&str] = &["ci/custom-consumer-values.yaml"];
/// The values files the chart ships: none (the defaults), production-like, secured, a worker
/// sidecar with routes, and a team's own consumer image.
const ALL_VALUES: [&[&str]; 5] = [&[], PRODUCTION, SECURE, WORKER, CUSTOM_CONSUMER];
/// Where the consumer finds the Secrets of its routes.
const ROUTES_DIR: &str = "/var/run/jobpipe/routes/";
/// The optional APIs the chart's objects need (KEDA, the Prometheus Operator, cert-manager, an
/// External metrics adapter), as `helm template --api-versions` takes them: a cluster that has
/// them all. Without them the chart refuses to render those objects.
const CLUSTER_APIS: &str =
    "keda.sh/v1alpha1,monitoring.coreos.com/v1,cert-manager.io/v1,external.metrics.k8s.io/v1beta1";
/// The sizing rule's k (deploy/README.md, "Scaling"): a consumer holds at most
/// `prefetch × queues ≤ k × concurrency` deliveries, so none waits behind more than k − 1 jobs
/// per handler slot and each is settled within k job timeouts of being sent.
const SIZING_K: u64 = 2;

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

/// `helm template` with `values` files for a cluster serving [`CLUSTER_APIS`]; the rendered
/// manifests as YAML text.
async fn render(values: &[&str], extra: &[&str]) -> Result<String, String> {
    render_on(CLUSTER_APIS, values, extra).await
}

/// `helm template` with `values` files for a cluster that serves `apis` (comma-separated) besides
/// Kubernetes' own; the rendered manifests as YAML text.
async fn render_on(apis: &str, values: &[&str], extra: &[&str]) -> Result<String, String> {
    let mut command = Command::new(project_tool("helm"));
    command
        .args(["template", "jp", "--namespace", "jobs"])
        .arg(chart());
    if !apis.is_empty() {
        command.args(["--api-versions", apis]);
    }
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
    let script = "import json, sys, yaml; \
                  json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)";
    match python_json(script, yaml).await {
        Value::Array(docs) => docs,
        other => panic!("not a list of documents: {other}"),
    }
}

/// A rendered TOML file as JSON (Python's tomllib), so that assertions name keys, not text.
async fn toml(text: &str) -> Value {
    let script =
        "import json, sys, tomllib; json.dump(tomllib.loads(sys.stdin.read()), sys.stdout)";
    python_json(script, text).await
}

/// What the tools venv's Python `script` writes to standard output for `input`, as JSON.
async fn python_json(script: &str, input: &str) -> Value {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(venv_tool("python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().expect("stdin");
    // Written while python runs, and bounded with it: a stuck python cannot block the write.
    let write = async move {
        stdin.write_all(input.as_bytes()).await.expect("write");
    };
    let ((), out) = within(Duration::from_secs(30), "python to json", async {
        tokio::join!(write, child.wait_with_output())
    })
    .await;
    let out = out.expect("python ran");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        )
    })
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

/// The pod spec of the `kind` object named `*suffix` (a Pod's own, or its template's).
fn pod_spec<'a>(docs: &'a [Value], kind: &str, suffix: &str) -> &'a Value {
    let doc = named(docs, kind, suffix);
    if kind == "Pod" {
        &doc["spec"]
    } else {
        &doc["spec"]["template"]["spec"]
    }
}

/// Where the pod's first container mounts Secret `secret`.
fn secret_mount(spec: &Value, secret: &str) -> String {
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["secret"]["secretName"] == secret)
        .unwrap_or_else(|| panic!("no volume of the Secret {secret}"));
    spec["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("the Secret {secret} is not mounted"))
        .to_owned()
}

/// The environment variable `name` of the pod's first container.
fn env_var<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {}", spec["containers"][0]["name"]))
}

/// The value after `flag` in the pod's first container's command.
fn command_arg<'a>(spec: &'a Value, flag: &str) -> &'a str {
    let command = spec["containers"][0]["command"]
        .as_array()
        .expect("command");
    command
        .iter()
        .position(|arg| arg == flag)
        .and_then(|i| command.get(i + 1))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {flag} in {command:?}"))
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

/// A pod's containers and init containers (where native sidecars run).
fn all_containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|field| spec[field].as_array().map_or(&[][..], Vec::as_slice))
}

/// The container named `name` of a pod, init containers included.
fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    all_containers(spec)
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The names of a container's environment variables, in order.
fn env_names(container: &Value) -> Vec<&str> {
    container["env"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect()
}

/// The Secret and key behind `file`: a file of a projected volume that `container` mounts, whole
/// and read-only, at the file's directory.
fn projected_secret(spec: &Value, container: &Value, file: &str) -> (String, String) {
    let (dir, name) = file
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{file}: not a path"));
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{file}: nothing is mounted at {dir}"));
    assert!(mount["subPath"].is_null(), "{mount}");
    assert_eq!(mount["readOnly"], true, "{mount}");
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    volume["projected"]["sources"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: not a projected volume: {volume}"))
        .iter()
        .find_map(|source| {
            let item = source["secret"]["items"]
                .as_array()?
                .iter()
                .find(|item| item["path"] == name)?;
            Some((
                source["secret"]["name"].as_str()?.to_owned(),
                item["key"].as_str()?.to_owned(),
            ))
        })
        .unwrap_or_else(|| panic!("{file}: no Secret projects {name} in {volume}"))
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
async fn the_chart_renders_and_validates_for_every_values_file() {
    for values in ALL_VALUES {
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
    for values in ALL_VALUES {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        let specs = pod_specs(&docs);
        assert!(specs.len() >= 3, "{values:?}: {} pod specs", specs.len());
        for (name, spec) in specs {
            let pod = &spec["securityContext"];
            assert_eq!(pod["runAsNonRoot"], true, "{name}");
            assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{name}");
            assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
            for container in all_containers(spec) {
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
    for values in [&[][..], SECURE, WORKER] {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        for deployment in of_kind(&docs, "Deployment") {
            let spec = &deployment["spec"]["template"]["spec"];
            for container in all_containers(spec) {
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
                    } else if probe["tcpSocket"].is_object() {
                        &probe["tcpSocket"]["port"]
                    } else {
                        &probe["httpGet"]["port"]
                    };
                    assert!(
                        exists(port),
                        "{values:?}: {} {} probe port {port} is not a container port",
                        deployment["metadata"]["name"],
                        container["name"]
                    );
                }
            }
        }
        let container = &pod_spec(&docs, "Deployment", "-producer")["containers"][0];
        if values == SECURE {
            // kubelet's gRPC probes cannot speak TLS: the admin port answers the same questions.
            for (probe, path) in [
                ("livenessProbe", "/livez"),
                ("startupProbe", "/livez"),
                ("readinessProbe", "/readyz"),
            ] {
                let probe = &container[probe];
                assert!(probe["grpc"].is_null(), "{probe}");
                assert_eq!(probe["httpGet"]["port"], "admin", "{probe}");
                assert_eq!(probe["httpGet"]["path"], path, "{probe}");
            }
        } else {
            assert_eq!(
                container["readinessProbe"]["grpc"]["service"],
                "jobpipe.v1.JobService"
            );
            assert_eq!(container["livenessProbe"]["grpc"]["service"], "");
            assert_eq!(container["startupProbe"]["grpc"]["service"], "");
        }
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
    }

    // The consumer's own grace period comes from the ConfigMap; the pod must outlast it.
    for values in ALL_VALUES {
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
    // The secure values name files under /etc/jobpipe, mounted from Secrets in the pods; here real
    // ones stand in for them, as environment overrides (which win over the file).
    let certs = CertDir::new();
    let stand_ins = stand_in_files(certs.path());
    let routes = stand_in_route_files(certs.path());
    // Besides the shipped files, the routes no file ships: a gRPC sidecar's default route, and
    // mutual TLS with a server name.
    let grpc_sidecar = [
        "--set",
        "consumer.worker.enabled=true",
        "--set",
        "consumer.worker.image.repository=worker",
        "--set",
        "consumer.worker.protocol=grpc",
    ];
    let mutual_tls = [
        "--set-json",
        r#"consumer.routes=[{"jobType": "pdf.*", "target": "grpcs://pdf.docs.svc:443",
            "timeout": "2m", "concurrency": 2, "tokenSecret": {"name": "pdf-token"},
            "tls": {"caSecret": {"name": "docs-ca"}, "clientCertSecret": "pdf-client-tls",
                    "serverName": "pdf.internal"}}]"#,
    ];
    let renders = ALL_VALUES
        .iter()
        .map(|values| (*values, &[][..]))
        .chain([(&[][..], &grpc_sidecar[..]), (&[][..], &mutual_tls[..])]);
    for (values, extra) in renders {
        let docs = documents(&render(values, extra).await.expect("renders")).await;
        let config = named(&docs, "ConfigMap", "jp-jobpipe");
        let dir = tempfile::tempdir().expect("temp dir");
        for (binary, file) in [
            ("jobpipe-producer", "producer.toml"),
            ("jobpipe-consumer", "consumer.toml"),
        ] {
            let path = dir.path().join(file);
            // The routes' files (no environment override reaches into [[routes]]) move to
            // real ones of the same names.
            let text = config["data"][file]
                .as_str()
                .expect("file")
                .replace(ROUTES_DIR, &routes);
            std::fs::write(&path, text).expect("write");
            let path = path.to_string_lossy().into_owned();
            // The consumer refuses keys it does not have (grpc, auth).
            let env: Vec<(&str, &str)> = stand_ins
                .iter()
                .filter(|(key, _)| {
                    values == SECURE
                        && (binary == "jobpipe-producer" || key.starts_with("JOBPIPE__AMQP__"))
                })
                .map(|(key, value)| (*key, value.as_str()))
                .collect();
            let (status, said) = output(binary, &["--check-config", "--config", &path], &env).await;
            assert!(status.success(), "{binary} {values:?} {extra:?}: {said}");
        }
    }
}

/// Real PEM files and a callers file in `dir` for every file the secure values name, and the
/// broker URL the pods assemble from the Secret: the environment overrides that use them.
fn stand_in_files(dir: &Path) -> Vec<(&'static str, String)> {
    let grpc = Ca::new(dir, "grpc");
    let server = grpc.server("producer", &["localhost"]);
    let clients = Ca::new(dir, "clients");
    let broker = Ca::new(dir, "broker");
    let client = broker.client("amqp-client", "jobpipe-producer", false);
    let callers = dir.join("callers.toml");
    std::fs::write(
        &callers,
        format!(
            "[[callers]]\nname = \"app\"\nroles = [\"submit\"]\ntoken_sha256 = \"{}\"\n",
            "ab".repeat(32)
        ),
    )
    .expect("callers file");
    let path = |file: &Path| file.to_string_lossy().into_owned();
    vec![
        (
            "JOBPIPE__AMQP__URL",
            "amqps://localhost:5671/%2f".to_owned(),
        ),
        ("JOBPIPE__AMQP__TLS__CA_FILE", path(&broker.cert)),
        ("JOBPIPE__AMQP__TLS__CERT_FILE", path(&client.cert)),
        ("JOBPIPE__AMQP__TLS__KEY_FILE", path(&client.key)),
        ("JOBPIPE__GRPC__TLS__CERT_FILE", path(&server.cert)),
        ("JOBPIPE__GRPC__TLS__KEY_FILE", path(&server.key)),
        ("JOBPIPE__GRPC__TLS__CLIENT_CA_FILE", path(&clients.cert)),
        ("JOBPIPE__AUTH__CALLERS_FILE", path(&callers)),
    ]
}

/// Stand-ins under `dir` for the files of the routes' Secrets (the token, the CA, a client
/// certificate) for the first routes; the directory that replaces [`ROUTES_DIR`].
fn stand_in_route_files(dir: &Path) -> String {
    let ca = Ca::new(dir, "worker");
    let client = ca.client("worker-client", "jobpipe-consumer", false);
    let routes = dir.join("routes");
    for index in 0..4 {
        let route = routes.join(index.to_string());
        std::fs::create_dir_all(&route).expect("route dir");
        std::fs::write(route.join("token"), "stand-in-token\n").expect("token");
        for (from, to) in [
            (&ca.cert, "ca.crt"),
            (&client.cert, "tls.crt"),
            (&client.key, "tls.key"),
        ] {
            std::fs::copy(from, route.join(to)).expect("PEM");
        }
    }
    format!("{}/", routes.display())
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

    let production = documents(&render(PRODUCTION, &[]).await.expect("renders")).await;
    let scaled = named(&production, "ScaledObject", "-consumer");
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    assert!(
        triggers.iter().all(|t| t["type"] == "prometheus"),
        "the load comes from jobpipe's gauges: {triggers:?}"
    );
    assert_eq!(scaled["spec"]["minReplicaCount"], 3);
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

    // Pods that are not ready (all of them while the broker is away) may always be evicted: a
    // broker outage must not block node drains.
    for values in ALL_VALUES {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        for budget in of_kind(&docs, "PodDisruptionBudget") {
            assert_eq!(
                budget["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow",
                "{values:?}: {}",
                budget["metadata"]["name"]
            );
        }
    }
    let strict = documents(
        &render(
            &[],
            &[
                "--set",
                "consumer.podDisruptionBudget.unhealthyPodEvictionPolicy=IfHealthyBudget",
            ],
        )
        .await
        .expect("renders"),
    )
    .await;
    assert_eq!(
        named(&strict, "PodDisruptionBudget", "-consumer")["spec"]["unhealthyPodEvictionPolicy"],
        "IfHealthyBudget"
    );

    let typo = render(&[], &["--set", "consumer.prefech=64"])
        .await
        .expect_err("unknown value");
    assert!(
        typo.contains("prefech"),
        "values.schema.json refuses unknown keys: {typo}"
    );
}

#[tokio::test]
async fn the_grpc_service_carries_only_grpc_and_metrics_have_services_of_their_own() {
    for values in ALL_VALUES {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        // The gRPC Service may be a LoadBalancer: /metrics must never ride along.
        let grpc = named(&docs, "Service", "-producer");
        let ports: Vec<&Value> = grpc["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| &p["name"])
            .collect();
        assert_eq!(ports, [&json!("grpc")], "{values:?}");
        let metrics = named(&docs, "Service", "-producer-metrics");
        assert_eq!(metrics["spec"]["type"], "ClusterIP", "{values:?}");
        assert_eq!(
            metrics["spec"]["ports"],
            json!([{"name": "admin", "port": 9090, "targetPort": "admin", "protocol": "TCP",
                    "appProtocol": "http"}]),
            "{values:?}"
        );
        assert_eq!(
            metrics["spec"]["selector"], grpc["spec"]["selector"],
            "the same pods"
        );

        // The ServiceMonitor scrapes the admin port of the metrics Services, and only theirs.
        let Some(monitor) = of_kind(&docs, "ServiceMonitor").first().copied() else {
            assert!(
                values != PRODUCTION && values != SECURE,
                "{values:?} enable the ServiceMonitor"
            );
            continue;
        };
        let wanted = monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        let mut selected: Vec<&str> = of_kind(&docs, "Service")
            .into_iter()
            .filter(|service| {
                wanted
                    .iter()
                    .all(|(k, v)| &service["metadata"]["labels"][k] == v)
            })
            .filter_map(|service| service["metadata"]["name"].as_str())
            .collect();
        selected.sort_unstable();
        assert_eq!(
            selected,
            ["jp-jobpipe-consumer", "jp-jobpipe-producer-metrics"],
            "{values:?}"
        );
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    }
}

#[tokio::test]
async fn the_secure_values_encrypt_and_authenticate_every_hop() {
    let docs = documents(&render(SECURE, &[]).await.expect("renders")).await;
    let producer = pod_spec(&docs, "Deployment", "-producer");
    let consumer = pod_spec(&docs, "Deployment", "-consumer");
    let topology = pod_spec(&docs, "Job", "-topology");
    let test_pod = pod_spec(&docs, "Pod", "-test-health");

    // Secrets are mounted whole, never with subPath: only then does kubelet update the files
    // when cert-manager (or anyone) rotates the Secret, and the services re-read them.
    for (name, spec, count) in [
        ("producer", producer, 5),
        ("consumer", consumer, 2),
        ("topology", topology, 2),
        ("test", test_pod, 2),
    ] {
        let secrets: Vec<&Value> = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter(|v| v["secret"].is_object())
            .map(|v| &v["name"])
            .collect();
        assert_eq!(secrets.len(), count, "{name}: {secrets:?}");
        let mounts = spec["containers"][0]["volumeMounts"]
            .as_array()
            .expect("volumeMounts");
        for secret in secrets {
            let mount = mounts
                .iter()
                .find(|m| &m["name"] == secret)
                .unwrap_or_else(|| panic!("{name}: {secret} is not mounted"));
            assert!(mount["subPath"].is_null(), "{name}: {mount}");
            assert_eq!(mount["readOnly"], true, "{name}: {mount}");
        }
    }

    // The producer's configuration names the files where its Secrets are mounted.
    let config = named(&docs, "ConfigMap", "jp-jobpipe");
    let data = |file: &str| {
        config["data"][file]
            .as_str()
            .expect("a TOML file")
            .to_owned()
    };
    let producer_toml = toml(&data("producer.toml")).await;
    let grpc = &producer_toml["grpc"];
    let serving = secret_mount(producer, "jobpipe-producer-tls");
    assert_eq!(grpc["tls"]["cert_file"], format!("{serving}/tls.crt"));
    assert_eq!(grpc["tls"]["key_file"], format!("{serving}/tls.key"));
    assert_eq!(
        grpc["tls"]["client_ca_file"],
        format!("{}/ca.crt", secret_mount(producer, "jobpipe-clients-ca"))
    );
    assert_eq!(grpc["reflection"], false);
    assert_eq!(
        producer_toml["auth"]["callers_file"],
        format!("{}/callers.toml", secret_mount(producer, "jobpipe-callers"))
    );
    assert_eq!(producer_toml["auth"]["anonymous_roles"], json!([]));

    // Both services reach the broker over verified TLS and log in with their own certificate.
    for (file, spec, client) in [
        ("producer.toml", producer, "jobpipe-broker-producer-tls"),
        ("consumer.toml", consumer, "jobpipe-broker-consumer-tls"),
    ] {
        let amqp = &toml(&data(file)).await["amqp"];
        let client = secret_mount(spec, client);
        assert_eq!(amqp["login"], "certificate", "{file}");
        assert_eq!(
            amqp["tls"]["ca_file"],
            format!("{}/ca.crt", secret_mount(spec, "jobs-rabbitmq-ca")),
            "{file}"
        );
        assert_eq!(amqp["tls"]["cert_file"], format!("{client}/tls.crt"));
        assert_eq!(amqp["tls"]["key_file"], format!("{client}/tls.key"));
    }
    // The topology Job has no ConfigMap (a hook runs first): the same in its environment.
    let client = secret_mount(topology, "jobpipe-broker-topology-tls");
    for (name, value) in [
        ("JOBPIPE__AMQP__LOGIN", "certificate".to_owned()),
        (
            "JOBPIPE__AMQP__TLS__CA_FILE",
            format!("{}/ca.crt", secret_mount(topology, "jobs-rabbitmq-ca")),
        ),
        ("JOBPIPE__AMQP__TLS__CERT_FILE", format!("{client}/tls.crt")),
        ("JOBPIPE__AMQP__TLS__KEY_FILE", format!("{client}/tls.key")),
    ] {
        assert_eq!(env_var(topology, name)["value"], value.as_str(), "{name}");
    }

    // Each component is its own broker user; host and port stay in the shared Secret.
    for (spec, secret) in [
        (producer, "jobpipe-broker-producer"),
        (consumer, "jobpipe-broker-consumer"),
        (topology, "jobpipe-broker-topology"),
    ] {
        let url = env_var(spec, "JOBPIPE__AMQP__URL")["value"]
            .as_str()
            .expect("url");
        assert!(
            url.starts_with("amqps://") && url.contains(":5671/"),
            "{url}"
        );
        for name in ["JOBPIPE__AMQP__USERNAME", "JOBPIPE__AMQP__PASSWORD"] {
            let from = &env_var(spec, name)["valueFrom"]["secretKeyRef"]["name"];
            assert_eq!(from, secret, "{name}");
        }
        let host = &env_var(spec, "AMQP_HOST")["valueFrom"]["secretKeyRef"]["name"];
        assert_eq!(host, "jobs-rabbitmq-default-user");
    }
    let text = config["data"].to_string().to_lowercase();
    for credential in ["password", "username", "begin"] {
        assert!(
            !text.contains(credential),
            "credentials stay in Secrets: {text}"
        );
    }

    // The broker is reached on its TLS port only.
    let policy = of_kind(&docs, "NetworkPolicy")[0];
    let egress: Vec<&Value> = policy["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .flat_map(|rule| rule["ports"].as_array().expect("ports"))
        .map(|p| &p["port"])
        .collect();
    assert!(egress.contains(&&json!(5671)), "{egress:?}");
    assert!(!egress.contains(&&json!(5672)), "{egress:?}");

    // cert-manager issues the serving certificate into the Secret the producer mounts, for the
    // name the `helm test` pod calls, which trusts the CA in that Secret.
    let certificate = &named(&docs, "Certificate", "-producer")["spec"];
    assert_eq!(certificate["secretName"], "jobpipe-producer-tls");
    assert_eq!(
        certificate["issuerRef"],
        json!({"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let addr = command_arg(test_pod, "--addr");
    let host = addr
        .strip_prefix("https://")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("the test pod calls {addr} without TLS"));
    let names = certificate["dnsNames"].as_array().expect("dnsNames");
    assert!(names.iter().any(|n| n == host), "{host} not in {names:?}");
    assert_eq!(
        command_arg(test_pod, "--ca"),
        format!("{}/ca.crt", secret_mount(test_pod, "jobpipe-producer-tls"))
    );
    let ca = test_pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["secret"]["secretName"] == "jobpipe-producer-tls")
        .expect("the CA volume");
    assert_eq!(
        ca["secret"]["items"],
        json!([{"key": "ca.crt", "path": "ca.crt"}]),
        "the test pod gets the CA, not the producer's key"
    );
    let client = secret_mount(test_pod, "jobpipe-test-client-tls");
    assert_eq!(command_arg(test_pod, "--cert"), format!("{client}/tls.crt"));
    assert_eq!(command_arg(test_pod, "--key"), format!("{client}/tls.key"));

    // Mutual TLS without a client certificate for the test pod: no test pod that can only fail.
    let untested = render(SECURE, &["--set", "tests.clientCertSecret="])
        .await
        .expect("renders");
    assert!(of_kind(&documents(&untested).await, "Pod").is_empty());

    // None of it by default.
    let defaults = documents(&render(&[], &[]).await.expect("renders")).await;
    assert!(of_kind(&defaults, "Certificate").is_empty());
    for (name, spec) in pod_specs(&defaults) {
        let volumes = spec["volumes"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(volumes.iter().all(|v| v["secret"].is_null()), "{name}");
    }
    let config = named(&defaults, "ConfigMap", "jp-jobpipe");
    let producer_toml = toml(config["data"]["producer.toml"].as_str().expect("toml")).await;
    assert!(producer_toml["amqp"].is_null() && producer_toml["auth"].is_null());
    assert!(producer_toml["grpc"]["tls"].is_null());
    assert_eq!(producer_toml["grpc"]["reflection"], true);
    let url = &env_var(
        pod_spec(&defaults, "Deployment", "-consumer"),
        "JOBPIPE__AMQP__URL",
    );
    assert!(
        url["value"]
            .as_str()
            .is_some_and(|u| u.starts_with("amqp://"))
    );
}

#[tokio::test]
async fn contradicting_security_settings_fail_the_render_naming_the_key() {
    for (settings, key) in [
        (
            &["producer.auth.enabled=true"][..],
            "producer.auth.callersSecret",
        ),
        (&["producer.tls.enabled=true"], "producer.tls.secretName"),
        (
            &[
                "rabbitmq.tls.enabled=true",
                "rabbitmq.tls.login=certificate",
            ],
            "rabbitmq.tls.clientCertSecret",
        ),
        (&["rabbitmq.tls.login=certificate"], "rabbitmq.tls.enabled"),
        (&["rabbitmq.tls.caSecret=ca"], "rabbitmq.tls.enabled"),
        (&["producer.tls.clientCaSecret=ca"], "producer.tls.enabled"),
        (
            &[
                "producer.tls.enabled=true",
                "producer.tls.secretName=tls",
                "producer.tls.certManager.enabled=true",
            ],
            "producer.tls.certManager.issuerRef.name",
        ),
        // And a login the services do not know: the schema refuses it before any template runs.
        (&["rabbitmq.tls.login=external"], "login"),
        // A worker with no image, TLS settings a plain-text target would ignore, one job type
        // routed twice, and routes the consumer could not take.
        (
            &["consumer.worker.enabled=true"],
            "consumer.worker.image.repository",
        ),
        (
            &[
                "consumer.routes[0].jobType=email.*",
                "consumer.routes[0].target=http://mailer:8080/",
                "consumer.routes[0].tls.serverName=mailer",
            ],
            "consumer.routes[0].tls",
        ),
        (
            &[
                "consumer.routes[0].jobType=email.*",
                "consumer.routes[0].target=noop",
                "consumer.routes[1].jobType=email.*",
                "consumer.routes[1].target=http://mailer:8080/",
            ],
            "consumer.routes[1].jobType",
        ),
        (
            &[
                "consumer.routes[0].jobType=email.*.send",
                "consumer.routes[0].target=noop",
            ],
            "/consumer/routes/0/jobType",
        ),
        (&["consumer.routes[0].jobType=email.send"], "target"),
        (
            &[
                "consumer.routes[0].jobType=email.send",
                "consumer.routes[0].target=https://mailer:8443/",
                "consumer.routes[0].tls.serverName=mailer.internal",
            ],
            "consumer.routes[0].tls.serverName",
        ),
        (
            &[
                "consumer.routes[0].jobType=noop",
                "consumer.routes[0].target=noop",
                "consumer.routes[0].timeout=5s",
            ],
            "consumer.routes[0].tokenSecret and .timeout",
        ),
        (
            &[
                "consumer.routes[0].jobType=email.send",
                "consumer.routes[0].target=ftp://mailer/",
            ],
            "/consumer/routes/0/target",
        ),
        (&["consumer.worker.protocol=websocket"], "protocol"),
        (&["consumer.handlers={noop,wait}"], "handlers"),
    ] {
        let args: Vec<&str> = settings.iter().flat_map(|set| ["--set", set]).collect();
        let error = render(&[], &args)
            .await
            .expect_err("contradicting settings render");
        assert!(error.contains(key), "{settings:?}: {error}");
    }
}

#[tokio::test]
async fn built_in_handlers_default_to_noop_and_no_worker_runs_by_default() {
    let defaults = documents(&render(&[], &[]).await.expect("renders")).await;
    let config = named(&defaults, "ConfigMap", "jp-jobpipe");
    let consumer_toml = toml(config["data"]["consumer.toml"].as_str().expect("toml")).await;
    // sleep and fail would let anyone who may submit tie up every consumer slot.
    assert_eq!(consumer_toml["handlers"]["builtin"], json!(["noop"]));
    assert!(consumer_toml["routes"].is_null(), "{consumer_toml}");
    let consumer = pod_spec(&defaults, "Deployment", "-consumer");
    assert!(consumer["initContainers"].is_null(), "{consumer}");
    let names: Vec<&Value> = all_containers(consumer).map(|c| &c["name"]).collect();
    assert_eq!(names, [&json!("consumer")]);
    let volumes = consumer["volumes"].as_array().expect("volumes");
    assert!(
        volumes.iter().all(|v| v["projected"].is_null()),
        "{volumes:?}"
    );
}

#[tokio::test]
async fn the_worker_sidecar_gets_the_default_route_and_its_probes() {
    let worker = [
        "--set",
        "consumer.worker.enabled=true",
        "--set",
        "consumer.worker.image.repository=registry.example.com/team/py-worker",
        "--set",
        "consumer.worker.image.tag=1.4.2",
    ];
    for (protocol, port, target) in [
        ("http", 8080, "http://127.0.0.1:8080/"),
        ("grpc", 50052, "grpc://127.0.0.1:50052"),
    ] {
        let (protocol, port_value) = (
            format!("consumer.worker.protocol={protocol}"),
            format!("consumer.worker.port={port}"),
        );
        let mut args = worker.to_vec();
        args.extend(["--set", &protocol, "--set", &port_value]);
        let yaml = render(&[], &args).await.expect("renders");
        let docs = documents(&yaml).await;
        let config = named(&docs, "ConfigMap", "jp-jobpipe");
        let consumer_toml = toml(config["data"]["consumer.toml"].as_str().expect("toml")).await;
        assert_eq!(
            consumer_toml["routes"],
            json!([{"job_type": "*", "target": target}]),
            "no routes given: everything goes to the sidecar over loopback"
        );
        assert_eq!(consumer_toml["handlers"]["builtin"], json!(["noop"]));

        let spec = pod_spec(&docs, "Deployment", "-consumer");
        // A native sidecar: up before the consumer takes a job, stopped after it drained.
        let sidecar = &spec["initContainers"][0];
        assert_eq!(sidecar["name"], "worker");
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert_eq!(
            sidecar["image"],
            "registry.example.com/team/py-worker:1.4.2"
        );
        assert!(sidecar["command"].is_null(), "the image's entrypoint");
        assert_eq!(
            sidecar["ports"],
            json!([{"name": "worker", "containerPort": port, "protocol": "TCP"}])
        );
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            assert_eq!(
                sidecar[probe]["tcpSocket"],
                json!({"port": "worker"}),
                "{protocol} {probe}"
            );
        }
        assert!(
            sidecar["startupProbe"]["failureThreshold"].as_u64() > Some(1),
            "a worker gets time to start"
        );
        assert!(sidecar["resources"]["limits"]["memory"].is_string());
        let tmp = sidecar["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == "/tmp")
            .expect("a writable /tmp");
        assert!(
            spec["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .any(|v| v["name"] == tmp["name"] && v["emptyDir"].is_object())
        );
        assert_eq!(spec["containers"].as_array().map(Vec::len), Some(1));
        assert_eq!(spec["containers"][0]["name"], "consumer");
        // Only the consumer reaches the worker, over loopback: no Service carries its port.
        for service in of_kind(&docs, "Service") {
            let ports = service["spec"]["ports"].to_string();
            assert!(!ports.contains("worker"), "{ports}");
        }

        // And it validates as a Kubernetes 1.30 object (restartPolicy on an init container).
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
        assert!(validated.status.success(), "{}", text(&validated));
    }

    // A probe given replaces the TCP check instead of merging into it (two handlers are invalid).
    let mut args = worker.to_vec();
    args.extend([
        "--set-json",
        r#"consumer.worker.readinessProbe={"httpGet":{"path":"/healthz","port":"worker"}}"#,
    ]);
    let docs = documents(&render(&[], &args).await.expect("renders")).await;
    let sidecar = &pod_spec(&docs, "Deployment", "-consumer")["initContainers"][0];
    assert_eq!(
        sidecar["readinessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": "worker"}})
    );
    assert_eq!(sidecar["livenessProbe"]["tcpSocket"]["port"], "worker");
}

#[tokio::test]
async fn routes_name_the_files_where_their_secrets_are_mounted() {
    let docs = documents(&render(WORKER, &[]).await.expect("renders")).await;
    let config = named(&docs, "ConfigMap", "jp-jobpipe");
    let consumer_toml = toml(config["data"]["consumer.toml"].as_str().expect("toml")).await;
    let routes = consumer_toml["routes"].as_array().expect("[[routes]]");
    // Routes given: the sidecar gets no route of its own besides them.
    assert_eq!(routes.len(), 2, "{routes:?}");
    let email = &routes[0];
    assert_eq!(email["job_type"], "email.*");
    assert_eq!(email["target"], "https://mailer.mail.svc:8443/jobs");
    assert_eq!(email["concurrency"], 4);
    assert_eq!(email["timeout"], "30s");
    assert_eq!(routes[1]["job_type"], "*");
    assert_eq!(routes[1]["target"], "http://127.0.0.1:8080/");
    assert!(routes[1]["concurrency"].is_null() && routes[1]["tls"].is_null());

    let spec = pod_spec(&docs, "Deployment", "-consumer");
    let consumer = container(spec, "consumer");
    let file = |value: &Value| value.as_str().expect("a path").to_owned();
    for (path, secret, key) in [
        (file(&email["token_file"]), "jobpipe-mailer-token", "token"),
        (file(&email["tls"]["ca_file"]), "mail-ca", "ca.crt"),
        (
            file(&routes[1]["token_file"]),
            "jobpipe-worker-token",
            "token",
        ),
    ] {
        assert!(path.starts_with(ROUTES_DIR), "{path}");
        assert_eq!(
            projected_secret(spec, consumer, &path),
            (secret.to_owned(), key.to_owned()),
            "{path}"
        );
    }
    // The worker holds no route Secret: it gets only what its own values give it.
    let sidecar = container(spec, "worker");
    let mounts = sidecar["volumeMounts"].to_string();
    assert!(!mounts.contains(ROUTES_DIR), "{mounts}");
    assert_eq!(
        sidecar["env"][0]["valueFrom"]["secretKeyRef"],
        json!({"name": "jobpipe-worker-token", "key": "token"})
    );
    assert_eq!(
        sidecar["readinessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "worker"})
    );

    // The NetworkPolicy lets the consumers reach the routed Service, and opens nothing to the
    // sidecar's port (the consumer calls it over loopback, which no NetworkPolicy filters).
    let policy = &of_kind(&docs, "NetworkPolicy")[0]["spec"];
    let egress = policy["egress"].as_array().expect("egress");
    assert!(
        egress.iter().any(
            |rule| rule["ports"] == json!([{"port": 8443, "protocol": "TCP"}])
                && rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                    == "mailer"
        ),
        "{egress:#?}"
    );
    let ingress = policy["ingress"].to_string();
    assert!(!ingress.contains("8080"), "{ingress}");
    assert!(
        of_kind(
            &documents(
                &render(&[], &["--set", "networkPolicy.enabled=true"])
                    .await
                    .expect("renders")
            )
            .await,
            "NetworkPolicy"
        )[0]["spec"]["egress"]
            .as_array()
            .is_some_and(|rules| rules.len() == 3),
        "no extra egress by default"
    );

    // Mutual TLS and a server name: every TLS file comes from the Secrets of that route.
    let mutual = r#"consumer.routes=[
        {"jobType": "pdf.render", "target": "grpcs://pdf.docs.svc:443",
         "tls": {"clientCertSecret": "pdf-client-tls", "serverName": "pdf.internal",
                 "caSecret": {"name": "docs-ca"}}},
        {"jobType": "noop", "target": "noop"}]"#;
    let docs = documents(&render(&[], &["--set-json", mutual]).await.expect("renders")).await;
    let config = named(&docs, "ConfigMap", "jp-jobpipe");
    let consumer_toml = toml(config["data"]["consumer.toml"].as_str().expect("toml")).await;
    let routes = consumer_toml["routes"].as_array().expect("[[routes]]");
    assert_eq!(routes.len(), 2, "no worker: no default route");
    let tls = &routes[0]["tls"];
    assert_eq!(tls["server_name"], "pdf.internal");
    assert!(routes[0]["token_file"].is_null());
    let spec = pod_spec(&docs, "Deployment", "-consumer");
    let consumer = container(spec, "consumer");
    for (field, secret, key) in [
        ("ca_file", "docs-ca", "ca.crt"),
        ("cert_file", "pdf-client-tls", "tls.crt"),
        ("key_file", "pdf-client-tls", "tls.key"),
    ] {
        assert_eq!(
            projected_secret(spec, consumer, &file(&tls[field])),
            (secret.to_owned(), key.to_owned()),
            "{field}"
        );
    }
    assert_eq!(routes[1], json!({"job_type": "noop", "target": "noop"}));
    let mounts = consumer["volumeMounts"].as_array().expect("volumeMounts");
    assert_eq!(
        mounts
            .iter()
            .filter(|m| m["mountPath"]
                .as_str()
                .is_some_and(|p| p.starts_with(ROUTES_DIR)))
            .count(),
        1,
        "a route without Secrets mounts nothing: {mounts:?}"
    );
}

#[tokio::test]
async fn escape_hatches_run_a_teams_own_consumer_image() {
    let docs = documents(&render(CUSTOM_CONSUMER, &[]).await.expect("renders")).await;
    let spec = pod_spec(&docs, "Deployment", "-consumer");
    let consumer = container(spec, "consumer");
    assert_eq!(
        consumer["image"],
        "registry.example.com/team/reports-consumer:3.1.0"
    );
    assert_eq!(consumer["imagePullPolicy"], "Always");
    assert_eq!(
        consumer["command"],
        json!(["/usr/local/bin/reports-consumer"])
    );
    assert_eq!(consumer["args"], json!(["--log-spans"]));
    // Its binary finds the chart's config file without --config: JOBPIPE_CONFIG names it, in
    // the directory where the ConfigMap is mounted.
    let config_file = env_var(spec, "JOBPIPE_CONFIG")["value"]
        .as_str()
        .expect("JOBPIPE_CONFIG");
    let config_dir = configmap_mount(spec, "jp-jobpipe");
    assert_eq!(config_file, format!("{config_dir}/consumer.toml"));
    // Extra variables come after the chart's own, so they may override them.
    let names = env_names(consumer);
    let extra = names.iter().position(|n| *n == "REPORTS_BUCKET");
    let chart = names.iter().position(|n| *n == "JOBPIPE__AMQP__PASSWORD");
    assert!(extra.is_some() && extra > chart, "{names:?}");
    assert_eq!(
        consumer["envFrom"],
        json!([{"secretRef": {"name": "reports-consumer-env"}}])
    );
    let fonts = consumer["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == "fonts")
        .expect("the extra mount");
    assert_eq!(fonts["mountPath"], "/usr/share/fonts/reports");
    assert!(
        spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["name"] == "fonts" && v["configMap"]["name"] == "report-fonts")
    );
    // The chart's own mounts and probes stay.
    for mount in ["config", "tmp"] {
        assert!(
            consumer["volumeMounts"].to_string().contains(mount),
            "{mount}"
        );
    }
    assert_eq!(consumer["readinessProbe"]["httpGet"]["path"], "/readyz");

    // The producer keeps the shared image and the stock binary.
    let producer = &pod_spec(&docs, "Deployment", "-producer")["containers"][0];
    assert_eq!(
        producer["image"],
        "registry.example.com/platform/jobpipe:0.1.0"
    );
    assert_eq!(producer["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        producer["command"],
        json!([
            "/usr/local/bin/jobpipe-producer",
            "--config",
            "/etc/jobpipe/producer.toml"
        ])
    );
    assert!(producer["args"].is_null() && producer["envFrom"].is_null());

    // The producer's hatches are the same keys; each image key falls back on its own.
    let docs = documents(
        &render(
            &[],
            &[
                "--set",
                "producer.image.tag=0.2.0-rc.1",
                "--set",
                "producer.command={/usr/local/bin/my-producer}",
                "--set",
                "producer.extraEnv[0].name=RUST_BACKTRACE",
                "--set",
                "producer.extraEnv[0].value=1",
                "--set",
                "producer.extraVolumes[0].name=extra",
                "--set",
                "producer.extraVolumes[0].emptyDir.sizeLimit=1Mi",
                "--set",
                "producer.extraVolumeMounts[0].name=extra",
                "--set",
                "producer.extraVolumeMounts[0].mountPath=/extra",
            ],
        )
        .await
        .expect("renders"),
    )
    .await;
    let spec = pod_spec(&docs, "Deployment", "-producer");
    let producer = &spec["containers"][0];
    assert_eq!(producer["image"], "ghcr.io/example/jobpipe:0.2.0-rc.1");
    assert_eq!(producer["command"], json!(["/usr/local/bin/my-producer"]));
    assert_eq!(env_names(producer).last(), Some(&"RUST_BACKTRACE"));
    assert_eq!(
        env_var(spec, "JOBPIPE_CONFIG")["value"],
        "/etc/jobpipe/producer.toml"
    );
    assert!(producer["volumeMounts"].to_string().contains("/extra"));
    assert!(spec["volumes"].to_string().contains("\"extra\""));
    let consumer = &pod_spec(&docs, "Deployment", "-consumer")["containers"][0];
    assert_eq!(consumer["image"], "ghcr.io/example/jobpipe:0.1.0");
}

/// KEDA on: the Prometheus this release is scraped by (through the chart's ServiceMonitor), and
/// queues `queues` (`{a,b}`).
fn keda_args(queues: &str) -> Vec<String> {
    [
        "consumer.autoscaling.keda.enabled=true",
        "serviceMonitor.enabled=true",
        "consumer.autoscaling.keda.prometheus.serverAddress=http://prometheus.monitoring:9090",
        &format!("jobpipe.queues={queues}"),
    ]
    .into_iter()
    .flat_map(|set| ["--set".to_owned(), set.to_owned()])
    .collect()
}

/// `args` as the `&str`s `render` takes.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn keda_scales_consumers_on_ready_plus_in_flight_summed_over_their_queues() {
    let mut args = keda_args("{default,emails}");
    args.extend(["--set", "rabbitmq.vhost=jobs"].map(str::to_owned));
    let docs = documents(&render(&[], &strs(&args)).await.expect("renders")).await;
    let scaled = &named(&docs, "ScaledObject", "-consumer")["spec"];
    assert_eq!(
        scaled["scaleTargetRef"],
        json!({"name": "jp-jobpipe-consumer"})
    );
    assert_eq!(
        (&scaled["minReplicaCount"], &scaled["maxReplicaCount"]),
        (&json!(1), &json!(20))
    );
    assert_eq!(
        (&scaled["pollingInterval"], &scaled["cooldownPeriod"]),
        (&json!(15), &json!(300))
    );
    // One number: the ready backlog plus the handlers running, a replica per concurrency's
    // worth of it. While nothing is ready or running but a job waits in the delay ladder, it is
    // 1: one consumer stays (or wakes) for when the job's delay ends.
    assert_eq!(
        scaled["advanced"]["scalingModifiers"],
        json!({
            "formula": "ready + inflight > 0 ? ready + inflight : (delayed > 0 ? 1 : 0)",
            "target": "64",
            "activationTarget": "0",
            "metricType": "AverageValue",
        })
    );
    // Producers and consumers both export the queue gauges: max by (queue) counts each queue
    // once, then the queues are summed (KEDA would take the largest of per-queue triggers).
    let release = r#"namespace="jobs",service=~"jp-jobpipe-(consumer|producer-metrics)""#;
    let trigger = |name: &str, query: String| {
        json!({
            "type": "prometheus",
            "name": name,
            "metadata": {
                "serverAddress": "http://prometheus.monitoring:9090",
                "query": query,
                "threshold": "64",
            },
        })
    };
    assert_eq!(
        scaled["triggers"],
        json!([
            trigger(
                "ready",
                format!(
                    r#"sum(max by (queue) (jobpipe_queue_ready_messages{{{release},queue=~"default|emails"}})) or vector(0)"#
                )
            ),
            trigger(
                "inflight",
                format!("sum(jobpipe_consumer_jobs_in_flight{{{release}}}) or vector(0)")
            ),
            trigger(
                "delayed",
                format!("max(jobpipe_delay_ladder_messages{{{release}}}) or vector(0)")
            ),
        ])
    );

    // KEDA never connects to the broker, so no connection string can name another vhost than
    // the services': the gauges come from their connections, which carry rabbitmq.vhost.
    assert!(of_kind(&docs, "TriggerAuthentication").is_empty());
    assert!(!scaled.to_string().contains("rabbitmq"), "{scaled}");
    for component in ["-producer", "-consumer"] {
        let url = &env_var(
            pod_spec(&docs, "Deployment", component),
            "JOBPIPE__AMQP__URL",
        );
        assert!(
            url["value"].as_str().is_some_and(|u| u.ends_with("/jobs")),
            "{component}: {url}"
        );
    }
    let consumer = named(&docs, "Deployment", "-consumer");
    assert!(
        consumer["spec"]["replicas"].is_null(),
        "KEDA owns the count"
    );
    assert!(of_kind(&docs, "HorizontalPodAutoscaler").is_empty());

    // The default selector is what the chart's ServiceMonitor scrapes: the consumers' and the
    // producers' metrics Services, and nothing else.
    let production = documents(&render(PRODUCTION, &[]).await.expect("renders")).await;
    let monitor = &of_kind(&production, "ServiceMonitor")[0]["spec"]["selector"]["matchLabels"];
    let mut scraped: Vec<&str> = of_kind(&production, "Service")
        .into_iter()
        .filter(|s| {
            monitor
                .as_object()
                .is_some_and(|m| m.iter().all(|(k, v)| &s["metadata"]["labels"][k] == v))
        })
        .filter_map(|s| s["metadata"]["name"].as_str())
        .collect();
    scraped.sort_unstable();
    assert_eq!(
        scraped,
        ["jp-jobpipe-consumer", "jp-jobpipe-producer-metrics"]
    );
    let query = named(&production, "ScaledObject", "-consumer")["spec"]["triggers"][0]["metadata"]
        ["query"]
        .as_str()
        .expect("query")
        .to_owned();
    assert!(query.contains(release), "{query}");
    assert!(
        query.contains(r#"queue=~"default|emails|reports""#),
        "{query}"
    );

    // Scale to zero, a selector of one's own, less load per replica, an authenticated Prometheus.
    args.extend(
        [
            "consumer.autoscaling.keda.minReplicaCount=0",
            "consumer.autoscaling.keda.jobsPerReplica=8",
            "consumer.autoscaling.keda.prometheus.authenticationRef=prometheus-auth",
            "consumer.autoscaling.keda.prometheus.metadata.authModes=bearer",
        ]
        .into_iter()
        .flat_map(|set| ["--set", set])
        .chain([
            // --set would split the matchers at the comma.
            "--set-json",
            r#"consumer.autoscaling.keda.prometheus.selector="cluster=\"eu1\",job=\"jobpipe\"""#,
        ])
        .map(str::to_owned),
    );
    let docs = documents(&render(&[], &strs(&args)).await.expect("renders")).await;
    let scaled = &named(&docs, "ScaledObject", "-consumer")["spec"];
    assert_eq!(scaled["minReplicaCount"], 0);
    assert_eq!(scaled["advanced"]["scalingModifiers"]["target"], "8");
    for trigger in scaled["triggers"].as_array().expect("triggers") {
        assert_eq!(
            trigger["authenticationRef"],
            json!({"name": "prometheus-auth"})
        );
        assert_eq!(trigger["metadata"]["authModes"], "bearer");
        assert_eq!(trigger["metadata"]["threshold"], "8");
        let query = trigger["metadata"]["query"].as_str().expect("query");
        assert!(query.contains(r#"{cluster="eu1",job="jobpipe""#), "{query}");
    }
    assert!(
        of_kind(&docs, "PodDisruptionBudget")
            .iter()
            .all(|b| b["metadata"]["name"] != "jp-jobpipe-consumer"),
        "no budget for a Deployment that may run no pod"
    );
}

#[tokio::test]
async fn the_hpa_scales_consumers_on_their_desired_replicas_estimate() {
    let docs = documents(
        &render(
            &[],
            &[
                "--set",
                "consumer.autoscaling.hpa.enabled=true",
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "consumer.autoscaling.hpa.minReplicas=3",
                "--set",
                "consumer.autoscaling.hpa.maxReplicas=30",
                "--set",
                "consumer.autoscaling.targetDrainTime=2m",
            ],
        )
        .await
        .expect("renders"),
    )
    .await;
    let hpa = &named(&docs, "HorizontalPodAutoscaler", "-consumer")["spec"];
    assert_eq!(
        hpa["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "jp-jobpipe-consumer"})
    );
    assert_eq!(
        (&hpa["minReplicas"], &hpa["maxReplicas"]),
        (&json!(3), &json!(30))
    );
    // Every consumer exports the same estimate; at a target of 1 per replica, the HPA runs
    // that many. Nothing else (no CPU) can outvote it.
    assert_eq!(
        hpa["metrics"],
        json!([{
            "type": "External",
            "external": {
                "metric": {
                    "name": "jobpipe_consumer_desired_replicas",
                    "selector": {"matchLabels": {"service": "jp-jobpipe-consumer"}},
                },
                "target": {"type": "AverageValue", "averageValue": "1"},
            },
        }])
    );
    // The estimate aims at the drain time the values give.
    let config = named(&docs, "ConfigMap", "jp-jobpipe");
    let consumer_toml = toml(config["data"]["consumer.toml"].as_str().expect("toml")).await;
    assert_eq!(consumer_toml["scaling"], json!({"target_drain_time": "2m"}));
    assert!(named(&docs, "Deployment", "-consumer")["spec"]["replicas"].is_null());
    assert!(of_kind(&docs, "ScaledObject").is_empty());
    assert_eq!(
        named(&docs, "PodDisruptionBudget", "-consumer")["spec"]["maxUnavailable"],
        1
    );

    // By default the consumers run a fixed count, and still estimate (for dashboards).
    let defaults = documents(&render(&[], &[]).await.expect("renders")).await;
    assert_eq!(
        named(&defaults, "Deployment", "-consumer")["spec"]["replicas"],
        2
    );
    let config = named(&defaults, "ConfigMap", "jp-jobpipe");
    let consumer_toml = toml(config["data"]["consumer.toml"].as_str().expect("toml")).await;
    assert_eq!(consumer_toml["scaling"]["target_drain_time"], "60s");
}

#[tokio::test]
async fn one_autoscaler_per_deployment_fed_by_gauges_that_exist() {
    let keda = keda_args("{default}");
    let mut both = keda.clone();
    both.extend(["--set", "consumer.autoscaling.hpa.enabled=true"].map(str::to_owned));
    let error = render(&[], &strs(&both))
        .await
        .expect_err("an HPA and a ScaledObject on one Deployment");
    assert!(
        error.contains("must not both scale the consumer Deployment"),
        "{error}"
    );

    // Whatever the values file and the mode, each Deployment has at most one autoscaler.
    let modes = [
        vec![],
        strs(&keda),
        // (the production values enable KEDA: the HPA replaces it)
        vec![
            "--set",
            "consumer.autoscaling.keda.enabled=false",
            "--set",
            "consumer.autoscaling.hpa.enabled=true",
            "--set",
            "serviceMonitor.enabled=true",
        ],
        vec!["--set", "producer.autoscaling.enabled=true"],
    ];
    for values in ALL_VALUES {
        for mode in &modes {
            let docs = documents(&render(values, mode).await.expect("renders")).await;
            for deployment in of_kind(&docs, "Deployment") {
                let name = &deployment["metadata"]["name"];
                let scalers = docs
                    .iter()
                    .filter(|d| {
                        matches!(
                            d["kind"].as_str(),
                            Some("HorizontalPodAutoscaler" | "ScaledObject")
                        ) && &d["spec"]["scaleTargetRef"]["name"] == name
                    })
                    .count();
                assert!(
                    scalers <= 1,
                    "{values:?} {mode:?}: {scalers} autoscalers for {name}"
                );
                if scalers == 1 {
                    assert!(
                        deployment["spec"]["replicas"].is_null(),
                        "{values:?} {mode:?}"
                    );
                }
            }
        }
    }

    // Settings under which the autoscaler could not work fail the render, naming the key.
    let with_keda = |more: &[&str]| {
        let mut args = keda.clone();
        args.extend(
            more.iter()
                .flat_map(|set| ["--set".to_owned(), (*set).to_owned()]),
        );
        args
    };
    for (args, key) in [
        (
            vec![
                "--set".to_owned(),
                "consumer.autoscaling.keda.enabled=true".to_owned(),
            ],
            "consumer.autoscaling.keda.prometheus.serverAddress",
        ),
        (
            with_keda(&["consumer.autoscaling.keda.jobsPerReplica=65"]),
            "consumer.autoscaling.keda.jobsPerReplica (65) must not exceed consumer.concurrency (64)",
        ),
        (
            with_keda(&[
                "consumer.autoscaling.keda.minReplicaCount=0",
                "producer.enabled=false",
            ]),
            "needs producer.enabled=true",
        ),
        (
            with_keda(&["jobpipe.queuePollInterval=0s"]),
            "jobpipe.queuePollInterval",
        ),
        (
            with_keda(&["consumer.autoscaling.keda.prometheus.metadata.query=up"]),
            "invalid propertyName 'query'",
        ),
        // Without the chart's ServiceMonitor the default selectors match nothing.
        (
            with_keda(&["serviceMonitor.enabled=false"]),
            "set consumer.autoscaling.keda.prometheus.selector",
        ),
        (
            vec![
                "--set".to_owned(),
                "consumer.autoscaling.hpa.enabled=true".to_owned(),
            ],
            "set consumer.autoscaling.hpa.metric.matchLabels",
        ),
        // The keys of the AMQP trigger and the CPU HPA are gone, loudly.
        (
            vec!["--set".to_owned(), "consumer.keda.enabled=true".to_owned()],
            "keda",
        ),
        (
            vec![
                "--set".to_owned(),
                "consumer.autoscaling.enabled=true".to_owned(),
            ],
            "enabled",
        ),
        // Classic queues are for benchmarks: the chart does not offer them.
        (
            vec!["--set".to_owned(), "jobpipe.queueType=classic".to_owned()],
            "queueType",
        ),
    ] {
        let error = render(&[], &strs(&args)).await.expect_err("refused");
        assert!(error.contains(key), "{args:?}: {error}");
    }
}

#[tokio::test]
async fn objects_of_optional_apis_render_only_where_the_cluster_serves_them() {
    // Scraped some other way than by the chart's ServiceMonitor, whose API is another case.
    let mut keda = keda_args("{default}");
    keda.extend(
        [
            "serviceMonitor.enabled=false",
            "consumer.autoscaling.keda.prometheus.selector=job=\"jobpipe\"",
        ]
        .into_iter()
        .flat_map(|set| ["--set".to_owned(), set.to_owned()]),
    );
    let cases: [(Vec<&str>, &str, &str, &str); 4] = [
        (
            strs(&keda),
            "keda.sh/v1alpha1",
            "consumer.autoscaling.keda.enabled",
            "ScaledObject",
        ),
        (
            vec!["--set", "serviceMonitor.enabled=true"],
            "monitoring.coreos.com/v1",
            "serviceMonitor.enabled",
            "ServiceMonitor",
        ),
        (
            vec![
                "--set",
                "producer.tls.enabled=true",
                "--set",
                "producer.tls.secretName=jobpipe-producer-tls",
                "--set",
                "producer.tls.certManager.enabled=true",
                "--set",
                "producer.tls.certManager.issuerRef.name=internal-ca",
            ],
            "cert-manager.io/v1",
            "producer.tls.certManager.enabled",
            "Certificate",
        ),
        (
            vec![
                "--set",
                "consumer.autoscaling.hpa.enabled=true",
                "--set",
                "consumer.autoscaling.hpa.metric.matchLabels.job=jobpipe",
            ],
            "external.metrics.k8s.io/v1beta1",
            "consumer.autoscaling.hpa.enabled",
            "HorizontalPodAutoscaler",
        ),
    ];
    for (args, api, value, kind) in cases {
        // Without the API: a message naming it and the value to turn off, not a "no matches
        // for kind" halfway through the install.
        let error = render_on("", &[], &args).await.expect_err("no such API");
        for said in [
            format!("{value}=true needs"),
            api.to_owned(),
            format!("{value}=false"),
        ] {
            assert!(error.contains(&said), "{value}: {said} not in {error}");
        }
        // With it (and only it), the object renders.
        let docs = documents(&render_on(api, &[], &args).await.expect("renders")).await;
        assert_eq!(of_kind(&docs, kind).len(), 1, "{value}");
    }
    // The shipped files that use such APIs need them too.
    for values in [PRODUCTION, SECURE] {
        render_on("", values, &[]).await.expect_err("no such APIs");
    }
    for values in [&[][..], WORKER, CUSTOM_CONSUMER] {
        render_on("", values, &[])
            .await
            .expect("renders on a bare cluster");
    }
}

/// `--set-json` arguments giving every scheduling field at `path` (empty: the global values), each
/// naming `marker`.
fn scheduling_args(path: &str, marker: &str) -> Vec<String> {
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    };
    let fields = json!({
        "imagePullSecrets": [{"name": format!("{marker}-registry")}],
        "podAnnotations": {"example.com/placed-by": marker, format!("example.com/{marker}"): "yes"},
        "nodeSelector": {"example.com/pool": marker},
        "tolerations": [{"key": "example.com/dedicated", "operator": "Equal", "value": marker,
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "example.com/class", "operator": "In", "values": [marker]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway"}],
        "priorityClassName": marker,
    });
    fields
        .as_object()
        .expect("fields")
        .iter()
        .flat_map(|(key, value)| ["--set-json".to_owned(), format!("{prefix}{key}={value}")])
        .collect()
}

/// Checks that the pod `doc` (a Deployment, Job or Pod) carries every scheduling field of
/// `marker` (see [`scheduling_args`]), its spread constraint selecting the pod's own component.
fn assert_scheduled(doc: &Value, marker: &str, context: &str) {
    let (meta, spec) = if doc["kind"] == "Pod" {
        (&doc["metadata"], &doc["spec"])
    } else {
        (
            &doc["spec"]["template"]["metadata"],
            &doc["spec"]["template"]["spec"],
        )
    };
    let who = format!("{context}: {} {}", doc["kind"], doc["metadata"]["name"]);
    let component = &meta["labels"]["app.kubernetes.io/component"];
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": format!("{marker}-registry")}]),
        "{who}"
    );
    assert_eq!(
        spec["nodeSelector"],
        json!({"example.com/pool": marker}),
        "{who}"
    );
    assert_eq!(spec["tolerations"][0]["value"], marker, "{who}");
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["values"],
        json!([marker]),
        "{who}"
    );
    assert_eq!(spec["priorityClassName"], marker, "{who}");
    assert_eq!(
        spec["topologySpreadConstraints"],
        json!([{
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {
                "app.kubernetes.io/name": "jobpipe",
                "app.kubernetes.io/instance": "jp",
                "app.kubernetes.io/component": component,
            }},
        }]),
        "{who}"
    );
    let annotations = &meta["annotations"];
    assert_eq!(annotations["example.com/placed-by"], marker, "{who}");
    assert_eq!(annotations[format!("example.com/{marker}")], "yes", "{who}");
}

#[tokio::test]
async fn every_pod_the_chart_creates_takes_the_scheduling_fields() {
    // Every pod: the Deployments', the topology Job's (a hook: without pull secrets or
    // tolerations it blocks the install) and the `helm test` pod's.
    let every_pod = ["--set", "topology.declareBy=job"];
    let components = [
        ("producer", "producer"),
        ("consumer", "consumer"),
        ("topology", "topology.job"),
        ("test", "tests"),
    ];
    for values in ALL_VALUES {
        // The global values reach every pod that has none of its own...
        let mut args = scheduling_args("", "global");
        args.extend(every_pod.map(str::to_owned));
        for path in ["producer", "consumer"] {
            // ...(the shipped files give these their own affinity).
            args.extend(["--set-json".to_owned(), format!("{path}.affinity={{}}")]);
        }
        let docs = documents(&render(values, &strs(&args)).await.expect("renders")).await;
        let pods: Vec<&Value> = docs
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "Job" | "Pod")))
            .collect();
        assert_eq!(pods.len(), 4, "{values:?}");
        for pod in &pods {
            assert_scheduled(pod, "global", &format!("{values:?}"));
        }

        // ...and each component's own replace them (annotations merge, its own winning).
        let mut args = scheduling_args("", "global");
        args.extend(every_pod.map(str::to_owned));
        for (marker, path) in components {
            args.extend(scheduling_args(path, marker));
        }
        let docs = documents(&render(values, &strs(&args)).await.expect("renders")).await;
        let mut seen = Vec::new();
        for pod in docs
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "Job" | "Pod")))
        {
            let meta = if pod["kind"] == "Pod" {
                &pod["metadata"]
            } else {
                &pod["spec"]["template"]["metadata"]
            };
            let component = meta["labels"]["app.kubernetes.io/component"]
                .as_str()
                .expect("component");
            assert_scheduled(pod, component, &format!("{values:?}"));
            assert_eq!(
                meta["annotations"]["example.com/global"], "yes",
                "{component}"
            );
            seen.push(component.to_owned());
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            ["consumer", "producer", "test", "topology"],
            "{values:?}"
        );
    }

    // The shipped anti-affinity keeps pods of one component apart, not producers from consumers.
    for values in [PRODUCTION, SECURE] {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        for component in ["producer", "consumer"] {
            let spec = pod_spec(&docs, "Deployment", &format!("-{component}"));
            let terms = spec["affinity"]["podAntiAffinity"]
                ["preferredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .expect("anti-affinity");
            for term in terms {
                assert_eq!(
                    term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"],
                    component,
                    "{values:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn probes_keep_the_charts_checks_and_take_their_timings_from_the_values() {
    let defaults = documents(&render(&[], &[]).await.expect("renders")).await;
    let admin = |path: &str| json!({"path": path, "port": "admin"});
    let grpc = |service: &str| json!({"port": 50051, "service": service});
    let consumer = &pod_spec(&defaults, "Deployment", "-consumer")["containers"][0];
    let producer = &pod_spec(&defaults, "Deployment", "-producer")["containers"][0];
    // The defaults are the probes the chart always had.
    for (container, check, field) in [
        (
            consumer,
            [admin("/livez"), admin("/readyz"), admin("/livez")],
            "httpGet",
        ),
        (
            producer,
            [grpc(""), grpc("jobpipe.v1.JobService"), grpc("")],
            "grpc",
        ),
    ] {
        let [live, ready, start] = check;
        assert_eq!(
            container["livenessProbe"],
            json!({field: live, "periodSeconds": 10, "failureThreshold": 3})
        );
        assert_eq!(
            container["readinessProbe"],
            json!({field: ready, "periodSeconds": 5, "failureThreshold": 2})
        );
        assert_eq!(
            container["startupProbe"],
            json!({field: start, "periodSeconds": 2, "failureThreshold": 30})
        );
    }

    let tuned = documents(
        &render(
            &[],
            &[
                "--set",
                "producer.probes.liveness.timeoutSeconds=5",
                "--set",
                "producer.probes.readiness.successThreshold=2",
                "--set",
                "consumer.probes.startup.failureThreshold=90",
                "--set",
                "consumer.probes.liveness.initialDelaySeconds=15",
                "--set",
                "producer.tls.enabled=true",
                "--set",
                "producer.tls.secretName=tls",
            ],
        )
        .await
        .expect("renders"),
    )
    .await;
    let producer = &pod_spec(&tuned, "Deployment", "-producer")["containers"][0];
    assert_eq!(
        producer["livenessProbe"],
        json!({"httpGet": admin("/livez"), "periodSeconds": 10, "failureThreshold": 3,
               "timeoutSeconds": 5})
    );
    assert_eq!(producer["readinessProbe"]["successThreshold"], 2);
    assert_eq!(producer["readinessProbe"]["httpGet"], admin("/readyz"));
    let consumer = &pod_spec(&tuned, "Deployment", "-consumer")["containers"][0];
    assert_eq!(
        consumer["startupProbe"],
        json!({"httpGet": admin("/livez"), "periodSeconds": 2, "failureThreshold": 90})
    );
    assert_eq!(consumer["livenessProbe"]["initialDelaySeconds"], 15);

    // The checks themselves stay the chart's; liveness and startup need a success to be one.
    for (set, key) in [
        ("producer.probes.liveness.httpGet.path=/", "httpGet"),
        (
            "consumer.probes.startup.successThreshold=2",
            "successThreshold",
        ),
    ] {
        let error = render(&[], &["--set", set]).await.expect_err("refused");
        assert!(error.contains(key), "{set}: {error}");
    }
}

#[tokio::test]
async fn every_values_file_follows_the_sizing_rule() {
    for values in ALL_VALUES {
        let docs = documents(&render(values, &[]).await.expect("renders")).await;
        let config = named(&docs, "ConfigMap", "jp-jobpipe");
        let consumer_toml = toml(config["data"]["consumer.toml"].as_str().expect("toml")).await;
        let number = |value: &Value| value.as_u64().expect("a number");
        let prefetch = number(&consumer_toml["consumer"]["prefetch"]);
        let concurrency = number(&consumer_toml["consumer"]["concurrency"]);
        let queues = consumer_toml["topology"]["queues"]
            .as_array()
            .map(Vec::len)
            .and_then(|n| u64::try_from(n).ok())
            .expect("queues");
        // RabbitMQ's consumer_timeout runs from when a delivery is sent: held deliveries must
        // not wait behind more than k - 1 jobs per slot.
        assert!(
            prefetch * queues <= SIZING_K * concurrency,
            "{values:?}: prefetch {prefetch} x {queues} queues > {SIZING_K} x concurrency \
             {concurrency}"
        );
        assert_eq!(
            consumer_toml["topology"]["queue_type"], "quorum",
            "{values:?}"
        );

        // Kubernetes waits longer than the consumer drains.
        let drain = consumer_toml["shutdown"]["grace_period"]
            .as_str()
            .and_then(|g| g.strip_suffix('s'))
            .and_then(|g| g.parse::<u64>().ok())
            .expect("grace_period in seconds");
        let spec = pod_spec(&docs, "Deployment", "-consumer");
        let pod_grace = number(&spec["terminationGracePeriodSeconds"]);
        assert!(pod_grace >= drain, "{values:?}: {pod_grace}s < {drain}s");

        // Every jobpipe container is probed three ways.
        for (component, container) in [("-consumer", "consumer"), ("-producer", "producer")] {
            let container = container_of(&docs, component, container);
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let probe = &container[probe];
                assert!(
                    ["grpc", "httpGet"]
                        .iter()
                        .any(|check| probe[check].is_object()),
                    "{values:?} {component}: {probe}"
                );
            }
        }
    }
}

/// The container `name` of the Deployment `*suffix`.
fn container_of<'a>(docs: &'a [Value], suffix: &str, name: &str) -> &'a Value {
    container(pod_spec(docs, "Deployment", suffix), name)
}

/// Where the pod's first container mounts the ConfigMap `name`.
fn configmap_mount(spec: &Value, name: &str) -> String {
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == name)
        .unwrap_or_else(|| panic!("no volume of {name}"));
    spec["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("{name} is not mounted"))
        .to_owned()
}
