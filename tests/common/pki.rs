//! A deployment CA for tests, made with `rserpool cert`.

use std::path::PathBuf;

use super::run;

/// A deployment CA in a directory of its own, removed at the end.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rserpool-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (code, _, stderr) = run(&["cert", "ca", "--dir", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        Self { dir }
    }

    /// Issues NAME with the grants of `flags` (`--registrar-id`, `--pe`, ...).
    pub fn issue(&self, name: &str, flags: &[&str]) {
        let mut args = vec![
            "cert",
            "issue",
            "--dir",
            self.dir.to_str().unwrap(),
            "--name",
            name,
        ];
        args.extend_from_slice(flags);
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 0, "{stderr}");
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    /// The `--tls-*` flags of identity NAME.
    pub fn flags(&self, name: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{name}.pem")),
            "--tls-key".into(),
            self.path(&format!("{name}-key.pem")),
            "--tls-ca".into(),
            self.path("ca.pem"),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
