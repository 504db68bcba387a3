//! What the container image promises, proven on the binaries (no container runtime here): they
//! run as a numeric non-root user on a read-only root filesystem with only a tmpfs `/tmp`, read
//! their configuration from a mounted file, and take the broker password from the environment
//! (producer) or from a mounted secret file (consumer). `bwrap` provides the sandbox.

use jobpipe_proto::v1::{JobSpec, SubmitJobRequest, job_service_client::JobServiceClient};
use jobpipe_tests::{
    broker::TestTopology,
    eventually, grpc_channel, http_get,
    process::{self, Service, bin_path, free_port, wait_ready},
    sample, within,
};
use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};
use tokio::process::Command;

/// The image's user.
const UID: &str = "65532";

/// `binary --config /run/jobpipe/<config>` as uid 65532, everything read-only but `/tmp`, with
/// `mounted` (a directory of the host) at `/run/jobpipe` (the sandbox cannot create a mount point
/// in its read-only `/etc`; in the chart it is `/etc/jobpipe`).
fn sandboxed(binary: &str, config: &str, mounted: &Path, env: &[(&str, &str)]) -> Service {
    let binary = bin_path(binary);
    let (bin_dir, name) = (
        binary.parent().expect("bin dir"),
        binary.file_name().expect("name"),
    );
    let mut command = sandbox();
    // The binaries and the configuration are mounted under /run: the host's copies may live
    // under /tmp, which the sandbox replaces with an empty tmpfs.
    command
        .args(["--tmpfs", "/run", "--ro-bind"])
        .arg(mounted)
        .arg("/run/jobpipe")
        .arg("--ro-bind")
        .arg(bin_dir)
        .arg("/run/bin")
        .args(["--chdir", "/", "--die-with-parent", "--"])
        .arg(Path::new("/run/bin").join(name))
        .args(["--config", &format!("/run/jobpipe/{config}")])
        .env_clear()
        .env("TMPDIR", "/tmp")
        .envs(env.iter().copied());
    Service::spawn(command)
}

/// bwrap with the image's constraints: the host's root read-only, a fresh tmpfs `/tmp`, and the
/// numeric user 65532 (in a user namespace of its own).
fn sandbox() -> Command {
    let mut command = Command::new("bwrap");
    command
        .args([
            "--ro-bind",
            "/",
            "/",
            "--tmpfs",
            "/tmp",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
        ])
        .args(["--unshare-user", "--uid", UID, "--gid", UID]);
    command
}

fn write(dir: &Path, name: &str, contents: &str) {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    // As a ConfigMap or Secret volume mounts them: readable, owned by someone else.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

#[tokio::test]
async fn the_services_run_as_non_root_on_a_read_only_filesystem_with_mounted_config_and_secrets() {
    let topology = TestTopology::new("hardened", &["default"]);
    let prefix = topology.config().prefix.to_string();
    let mounted = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(mounted.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let (grpc, producer_admin, consumer_admin) = (free_port(), free_port(), free_port());
    // No password in the URL: it comes from the environment or a file.
    let (broker, user, password, vhost) = jobpipe_tests::broker::broker_parts();
    let common = format!(
        "[amqp]\nurl = \"amqp://{user}@{broker}/{vhost}\"\n{{secret}}\n\
         [topology]\nprefix = \"{prefix}\"\nqueues = [\"default\"]\n[log]\nformat = \"json\"\n"
    );
    write(
        mounted.path(),
        "producer.toml",
        &format!(
            "[grpc]\nlisten = \"{grpc}\"\n[admin]\nlisten = \"{producer_admin}\"\n{}",
            common.replace("{secret}", "")
        ),
    );
    write(
        mounted.path(),
        "consumer.toml",
        &format!(
            "[admin]\nlisten = \"{consumer_admin}\"\n{}",
            common.replace("{secret}", "password_file = \"/run/jobpipe/amqp-password\"")
        ),
    );
    write(mounted.path(), "amqp-password", &format!("{password}\n"));

    let producer = sandboxed(
        "jobpipe-producer",
        "producer.toml",
        mounted.path(),
        &[("JOBPIPE__AMQP__PASSWORD", &password)],
    );
    let consumer = sandboxed("jobpipe-consumer", "consumer.toml", mounted.path(), &[]);
    for admin in [producer_admin, consumer_admin] {
        wait_ready(admin).await;
    }

    let mut client = JobServiceClient::new(grpc_channel(grpc).await);
    let job = JobSpec {
        r#type: "noop".into(),
        ..JobSpec::default()
    };
    client
        .submit_job(SubmitJobRequest { job: Some(job) })
        .await
        .expect("submitted");
    eventually(Duration::from_secs(20), "the job to be processed", || async {
        let metrics = http_get(consumer_admin, "/metrics").await.1;
        sample(&metrics, r#"jobpipe_consumer_jobs_total{queue="default",type="noop",outcome="succeeded",reason=""}"#)
            == Some(1.0)
    })
    .await;

    for service in [producer, consumer] {
        // bwrap does not forward signals: send SIGTERM to the service itself, as a container
        // runtime does; bwrap then exits with the service's status.
        process::signal(inner_pid(service.pid()), "TERM");
        let status = service.exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}

/// The process bwrap started.
fn inner_pid(bwrap: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{bwrap}/task/{bwrap}/children"))
        .expect("bwrap's children")
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("one child")
}

#[tokio::test]
async fn the_sandbox_really_is_read_only_and_unprivileged() {
    // The test above means something only if the sandbox denies what it claims to.
    let mut command = sandbox();
    command.arg("--").args([
        "sh",
        "-c",
        "id -u; touch /etc/jobpipe-probe 2>&1; touch /tmp/ok && echo tmp-writable",
    ]);
    let out = within(
        Duration::from_secs(30),
        "the sandboxed shell",
        command.output(),
    )
    .await
    .expect("bwrap (tests/tools/install.sh installs bubblewrap)");
    let said = String::from_utf8_lossy(&out.stdout);
    let mut lines = said.lines();
    assert_eq!(lines.next(), Some(UID), "{said}");
    assert!(said.contains("Read-only file system"), "{said}");
    assert!(said.contains("tmp-writable"), "{said}");
}
