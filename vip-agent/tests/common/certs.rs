//! Test PKI made with the `openssl` CLI: a CA, a server certificate for 127.0.0.1, a client
//! certificate, and an unrelated CA.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::etcd::TempDir;

pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// Signed by `ca` like the others, but expired.
    pub expired_server_cert: PathBuf,
    pub expired_server_key: PathBuf,
    pub expired_client_cert: PathBuf,
    pub expired_client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A certificate for `name` signed by `ca`, valid for `days` from now; `-1` makes one that has
/// already expired (its notAfter lies before its notBefore, which no verifier accepts).
fn leaf(dir: &Path, ca: &str, name: &str, days: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extension file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

impl Pki {
    pub fn generate() -> Self {
        let dir = TempDir::new("pki");
        let d = dir.path();
        ca(d, "ca");
        ca(d, "other-ca");
        let server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
                          basicConstraints=critical,CA:FALSE\n\
                          keyUsage=critical,digitalSignature,keyEncipherment\n\
                          extendedKeyUsage=serverAuth,clientAuth\n";
        let client_ext = "basicConstraints=critical,CA:FALSE\n\
                          keyUsage=critical,digitalSignature,keyEncipherment\n\
                          extendedKeyUsage=clientAuth\n";
        leaf(d, "ca", "server", "2", server_ext);
        leaf(d, "ca", "client", "2", client_ext);
        leaf(d, "ca", "expired-server", "-1", server_ext);
        leaf(d, "ca", "expired-client", "-1", client_ext);
        Self {
            ca: d.join("ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.crt"),
            expired_server_cert: d.join("expired-server.crt"),
            expired_server_key: d.join("expired-server.key"),
            expired_client_cert: d.join("expired-client.crt"),
            expired_client_key: d.join("expired-client.key"),
            dir,
        }
    }
}
