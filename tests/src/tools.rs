//! Real third-party tools the tests drive, installed into `.tools/` by `tests/tools/install.sh`
//! (which `make test` runs): Python tools in `.tools/venv/bin`, others in `.tools/bin`.

use std::path::PathBuf;

/// A tool in the project's Python venv (grpcurl, kubernetes-validate, python).
pub fn venv_tool(name: &str) -> PathBuf {
    tool("venv/bin", name)
}

/// A tool in `.tools/bin` (helm).
pub fn project_tool(name: &str) -> PathBuf {
    tool("bin", name)
}

/// The project's Python (h2, grpcio, ...) running `tests/tools/<script>`: for clients that send
/// what no well-behaved library would, written with third-party protocol packages or raw frames.
pub fn python_script(script: &str) -> tokio::process::Command {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(script);
    let mut command = tokio::process::Command::new(venv_tool("python"));
    command
        .arg(path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `tests/tools/<script>` with `args` to completion (at most 60 s); its standard output,
/// failing the test with its error output if it fails.
pub async fn run_script(script: &str, args: &[&str]) -> String {
    let output = crate::within(
        std::time::Duration::from_secs(60),
        script,
        python_script(script).args(args).output(),
    )
    .await
    .expect("run the script");
    assert!(
        output.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `.tools/<dir>/<name>`, failing the test with the fix if it is missing.
fn tool(dir: &str, name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools")
        .join(dir)
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/tools/install.sh (make test does)",
        path.display()
    );
    path
}
