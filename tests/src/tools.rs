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
