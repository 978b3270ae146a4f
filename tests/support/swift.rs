//! A real OpenStack Swift (TempAuth, TempURL, S3 API; optionally Keystone v3) for the
//! tests, run by the project's own `tests/servers/swift.sh` on free ports in a private
//! directory, stopped on drop. Objects are put in place with curl, as any Swift client would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SwiftServer {
    dir: tempfile::TempDir,
    script: PathBuf,
    /// The KEY=VALUE lines `swift.sh start` printed (SWIFT_AUTH_URL, S3_ENDPOINT, ...).
    pub env: HashMap<String, String>,
}

/// The value of header `name` in curl's `-D -` output.
fn header(headers: &str, name: &str) -> String {
    headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} in {headers}"))
}

/// Runs curl with `args`, asserts success, returns the response headers.
fn curl_headers(what: &str, args: &[String]) -> String {
    let out = Command::new(crate::tool("curl"))
        .args(["-sS", "-f", "-D", "-", "-o", "/dev/null"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Login to TempAuth: (storage URL, token).
pub fn login(auth_url: &str, user: &str, key: &str) -> (String, String) {
    let headers = curl_headers(
        &format!("login as {user}"),
        &[
            "-H".into(),
            format!("X-Auth-User: {user}"),
            "-H".into(),
            format!("X-Auth-Key: {key}"),
            auth_url.into(),
        ],
    );
    (
        header(&headers, "X-Storage-Url"),
        header(&headers, "X-Auth-Token"),
    )
}

/// A Keystone v3 token for `user` scoped to `project` (both in domain "default").
pub fn keystone_token(auth_url: &str, user: &str, password: &str, project: &str) -> String {
    let body = format!(
        r#"{{"auth":{{"identity":{{"methods":["password"],"password":{{"user":{{"name":"{user}","domain":{{"id":"default"}},"password":"{password}"}}}}}},"scope":{{"project":{{"name":"{project}","domain":{{"id":"default"}}}}}}}}}}"#
    );
    let headers = curl_headers(
        "Keystone login",
        &[
            "-H".into(),
            "Content-Type: application/json".into(),
            "-d".into(),
            body,
            format!("{}/auth/tokens", auth_url.trim_end_matches('/')),
        ],
    );
    header(&headers, "X-Subject-Token")
}

/// Runs curl `method` on `url` with `token`; returns the HTTP status.
pub fn curl_with_token(method: &str, url: &str, token: &str, args: &[&str]) -> u16 {
    let out = Command::new(crate::tool("curl"))
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "-H",
        ])
        .arg(format!("X-Auth-Token: {token}"))
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

impl SwiftServer {
    pub fn start() -> SwiftServer {
        SwiftServer::start_with(false)
    }

    /// With a real Keystone v3 and a second proxy that authenticates through it
    /// (tests/setup.sh installs it).
    pub fn start_with_keystone() -> SwiftServer {
        SwiftServer::start_with(true)
    }

    fn start_with(keystone: bool) -> SwiftServer {
        let dir = tempfile::Builder::new()
            .prefix("swift-")
            .tempdir()
            .expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("servers/swift.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .env("SWIFT_KEYSTONE", if keystone { "1" } else { "0" })
            .output()
            .expect("run swift.sh");
        assert!(
            out.status.success(),
            "swift.sh start failed ({} installs Swift and Keystone): {}",
            crate::SETUP,
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        SwiftServer { dir, script, env }
    }

    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("swift.sh printed no {key}"))
    }

    /// Runs curl with `args` against `path` (relative to the storage URL) as `user`.
    pub fn curl(&self, user: (&str, &str), method: &str, path: &str, args: &[&str]) -> u16 {
        let (storage, token) = login(self.var("SWIFT_AUTH_URL"), user.0, user.1);
        curl_with_token(method, &format!("{storage}{path}"), &token, args)
    }

    /// As the account's admin (test:tester).
    pub fn admin(&self, method: &str, path: &str, args: &[&str]) -> u16 {
        self.curl(
            (self.var("SWIFT_USER"), self.var("SWIFT_KEY")),
            method,
            path,
            args,
        )
    }

    /// Uploads `data` as `container/object` (creating the container).
    pub fn put(&self, container: &str, object: &str, data: &[u8]) {
        let status = self.admin("PUT", &format!("/{container}"), &[]);
        assert!(matches!(status, 201 | 202), "create container: {status}");
        let file = self.dir.path().join("upload");
        std::fs::write(&file, data).expect("write upload");
        let encoded: String = object.replace(' ', "%20");
        let status = self.admin(
            "PUT",
            &format!("/{container}/{encoded}"),
            &["--data-binary", &format!("@{}", file.display())],
        );
        assert_eq!(status, 201, "upload {container}/{object}");
    }

    /// The proxy's log (to see which requests reached the server).
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/proxy.log")).unwrap_or_default()
    }
}

impl Drop for SwiftServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}
