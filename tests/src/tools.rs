//! Real third-party clients the tests drive (installed into `.tools/` by `tests/tools/install.sh`,
//! which `make test` runs).

use std::path::PathBuf;

/// The path of a tool in the project's venv, failing the test with the fix if it is missing.
pub fn venv_tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/venv/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/tools/install.sh (make test does)",
        path.display()
    );
    path
}

/// The path of a tool installed into `.tools/bin` (helm), failing the test with the fix if it is
/// missing.
pub fn project_tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/tools/install.sh (make test does)",
        path.display()
    );
    path
}
