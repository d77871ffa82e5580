//! A test PKI made with the `openssl` command: a CA and leaf certificates it signs, as
//! PEM files in a directory (what an operator mounts, what stunnel and `openssl s_client`
//! read). Shared by the TLS tests of the workspace (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA in `dir` (`ca.crt`, `ca.key`).
pub struct Pki {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (apt openssl) runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A new CA named `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "3",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        std::fs::copy(dir.join(format!("{name}.crt")), dir.join("ca.crt")).unwrap();
        std::fs::copy(dir.join(format!("{name}.key")), dir.join("ca.key")).unwrap();
        Pki {
            dir: dir.to_owned(),
        }
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A leaf `name.crt` / `name.key` for `sans` (`DNS:sip.test,IP:127.0.0.1`), good for
    /// servers and clients.
    pub fn leaf(&self, name: &str, sans: &str) -> (PathBuf, PathBuf) {
        self.leaf_for_days(name, sans, 3)
    }

    /// [`Pki::leaf`], valid for `days` from now.
    pub fn leaf_for_days(&self, name: &str, sans: &str, days: u32) -> (PathBuf, PathBuf) {
        let ext = format!(
            "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
        );
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                &days.to_string(),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }
}
