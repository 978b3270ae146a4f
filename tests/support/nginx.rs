//! A real nginx (Debian's package) serving a directory on 127.0.0.1, for http:// sources
//! and as the reference server in benchmarks.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves `root` on a free loopback port. Fails the test if nginx is not installed.
    pub fn serve(root: &Path) -> Nginx {
        Nginx::serve_with_token(root, None)
    }

    /// Like [`Nginx::serve`], answering 401 unless `Authorization: Bearer <token>` is sent.
    pub fn serve_with_token(root: &Path, token: Option<&str>) -> Nginx {
        let guard = token.map_or(String::new(), |t| {
            format!("    if ($http_authorization != \"Bearer {t}\") {{ return 401; }}\n")
        });
        let binary = crate::tool("nginx");
        let dir = tempfile::Builder::new()
            .prefix("nginx-")
            .tempdir()
            .expect("temp dir");
        // A port nobody holds right now; nginx binds it a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\nuser root;\n\
                 error_log {dir}/error.log;\npid {dir}/nginx.pid;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {dir}/access.log;\n  sendfile on;\n\
                 client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n\
                 uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n\
                 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n{guard}  }}\n}}\n",
                dir = dir.path().display(),
                root = root.display(),
            ),
        )
        .expect("write nginx.conf");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        // nginx has no readiness notification; wait until its socket accepts.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited with {status}");
            }
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
