//! Throwaway certificate authorities for tests of `verify-ca` and `verify-full`: a CA made with
//! the `openssl` command line, and server certificates it signs for the names a test chooses.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA that exists for one test: its certificate (`ca.pem`) and key, in a directory deleted
/// on drop.
#[derive(Debug)]
pub struct ThrowawayCa {
    dir: tempfile::TempDir,
}

/// A server certificate and its key, signed by a [`ThrowawayCa`].
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, unencrypted).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install it: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ThrowawayCa {
    /// A new CA named `name`, valid for two days.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("seren-ca-")
            .tempdir()
            .expect("tempdir");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Self { dir }
    }

    /// The CA's certificate (PEM): what a client trusts.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `names` (`DNS:host` or `IP:addr` entries, as in
    /// `subjectAltName`), stored as `<label>.crt` and `<label>.key`.
    pub fn server(&self, label: &str, names: &[&str]) -> ServerCert {
        let d = self.dir.path();
        let ext = d.join(format!("{label}.ext"));
        fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                names.join(",")
            ),
        )
        .expect("write extensions");
        let (key, csr, crt) = (
            format!("{label}.key"),
            format!("{label}.csr"),
            format!("{label}.crt"),
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={label}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext.display().to_string(),
            ],
        );
        ServerCert {
            cert: d.join(crt),
            key: d.join(key),
        }
    }
}
