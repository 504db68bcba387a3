//! Certificates the tests make for themselves: a CA, and server and client certificates it
//! signs (or that have expired), as PEM files in a directory every user may read (a throwaway
//! RabbitMQ node reads its own as user `rabbitmq`).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};
use time::{Duration, OffsetDateTime};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A certificate authority of the test's own.
#[derive(Debug)]
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Its certificate, for whoever trusts it.
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A directory under `/tmp` everyone may read, removed with the value.
#[derive(Debug)]
pub struct CertDir {
    dir: tempfile::TempDir,
}

impl CertDir {
    /// A new, empty directory.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jp-certs-")
            .tempdir_in("/tmp")
            .expect("a certificate directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Self { dir }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for CertDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Ca {
    /// A CA named `name`, its certificate written into `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let cert = write(dir, &format!("{name}-ca.pem"), &issuer.pem());
        Self {
            issuer,
            cert,
            dir: dir.to_owned(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid now.
    pub fn server(&self, file: &str, names: &[&str]) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("a DNS name")),
            })
            .collect();
        self.sign(file, params, false)
    }

    /// A client certificate whose subject CN is `name`; expired when `expired`.
    pub fn client(&self, file: &str, name: &str, expired: bool) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        self.sign(file, params, expired)
    }

    fn sign(&self, file: &str, mut params: CertificateParams, expired: bool) -> Pem {
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = if expired {
            (now - Duration::days(3), now - Duration::days(1))
        } else {
            (now - Duration::hours(1), now + Duration::days(2))
        };
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pem {
            cert: write(&self.dir, &format!("{file}.pem"), &cert.pem()),
            key: write(&self.dir, &format!("{file}.key"), &key.serialize_pem()),
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a PEM file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}
