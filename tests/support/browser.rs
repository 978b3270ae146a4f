//! A real Chromium (Debian's `chromium`), headless, driven through chromedriver
//! (`chromium-driver`) with the W3C WebDriver protocol: JSON over HTTP on 127.0.0.1.
//!
//! [`Browser::start`] starts chromedriver on a free port and opens a session with a fresh
//! profile and the page load strategy `none`, so commands that navigate (a click on a
//! submit button) return at once and the test polls the page for what it waits for.
//! Chromium's background networking is off: the tests use only loopback, and a machine
//! without other network would otherwise see the browser keep trying to reach its online
//! services.
//! Chromium's home is a temp dir too (`HOME`, `XDG_*`: it keeps crash reports and other
//! state there, whatever `--user-data-dir` says). chromedriver runs in a process group of
//! its own, which the browser's processes inherit: dropping the [`Browser`] ends the
//! session, then kills, one by one, whatever is left in that group (even if the session
//! never started or did not end), and removes the temp dir.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{tool, try_http_request};

/// How long chromedriver and a new session may take to start (a bound, not an estimate).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver with one Chromium session; see the module documentation.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start() -> Browser {
        let chromium = tool("chromium");
        let chromedriver = tool("chromedriver");
        let dir = tempfile::Builder::new()
            .prefix("fusestream-browser-")
            .tempdir()
            .expect("temp dir");
        let out = dir.path().join("chromedriver.out");
        let out_file = std::fs::File::create(&out).expect("create chromedriver output");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home dir");
        let driver = Command::new(chromedriver)
            .arg("--port=0")
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            // A group of its own, for the cleanup (see the module documentation).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone().expect("clone output"))
            .stderr(out_file)
            .spawn()
            .expect("spawn chromedriver");
        let mut browser = Browser {
            driver,
            addr: String::new(),
            session: String::new(),
            dir,
        };
        // "ChromeDriver was started successfully on port N."
        let started = Instant::now();
        let port = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(port) = text
                .split("started successfully on port ")
                .nth(1)
                .and_then(|rest| rest.split('.').next()?.parse::<u16>().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited with {status}:\n{text}");
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "chromedriver did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        browser.addr = format!("127.0.0.1:{port}");
        let profile = browser.dir.path().join("profile");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.display())]);
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "none",
            "goog:chromeOptions": { "binary": chromium, "args": args.collect::<Vec<_>>() },
        }}});
        let session = browser.command_with("POST", "/session", Some(capabilities), START_TIMEOUT);
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {session}"))
            .to_string();
        browser
    }

    /// chromedriver's log (every command and its answer), for failure messages.
    pub fn logs(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("chromedriver.log"));
        log.unwrap_or_default()
    }

    /// A WebDriver command of this session (`path` after `/session/ID`); its `value`.
    pub fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// [`Browser::command`], returning a WebDriver error (`error: message`) instead.
    pub fn try_command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        self.exchange(method, &path, body, COMMAND_TIMEOUT)
    }

    fn command_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Value {
        self.exchange(method, path, body, timeout)
            .unwrap_or_else(|e| {
                panic!(
                    "WebDriver {method} {path}: {e}\n--- chromedriver ---\n{}",
                    self.logs()
                )
            })
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let body = body.map(|b| b.to_string());
        let (status, text) = try_http_request(&self.addr, method, path, body.as_deref(), timeout)
            .map_err(|e| format!("chromedriver at {}: {e}", self.addr))?;
        let reply: Value =
            serde_json::from_str(&text).map_err(|e| format!("{status}: {e}: {text}"))?;
        let value = reply.get("value").cloned().unwrap_or(Value::Null);
        match value.get("error").and_then(Value::as_str) {
            Some(error) => Err(format!("{status} {error}: {}", value["message"])),
            None if status == 200 => Ok(value),
            None => Err(format!("{status}: {text}")),
        }
    }

    /// Loads `url` in the current window (returns before the page has loaded).
    pub fn navigate(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    /// The URL of the current window's page.
    pub fn url(&self) -> String {
        let url = self.command("GET", "/url", None);
        url.as_str().unwrap_or_default().to_string()
    }

    /// The first element matching the CSS `selector`, if there is one now.
    pub fn find(&self, selector: &str) -> Option<String> {
        let found = self.try_command(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": selector })),
        );
        if let Err(e) = &found {
            eprintln!("find: {e}");
        }
        Some(found.ok()?[ELEMENT].as_str()?.to_string())
    }

    /// Types `text` into `element`; for a file input, `text` is the path of the file.
    pub fn send_keys(&self, element: &str, text: &str) {
        let path = format!("/element/{element}/value");
        self.command("POST", &path, Some(json!({ "text": text })));
    }

    pub fn click(&self, element: &str) {
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Runs `script` (a function body) in the current page; what it returns.
    pub fn execute(&self, script: &str) -> Result<Value, String> {
        let body = json!({ "script": script, "args": [] });
        self.try_command("POST", "/execute/sync", Some(body))
    }

    /// The current window's handle.
    pub fn window(&self) -> String {
        let handle = self.command("GET", "/window", None);
        handle.as_str().unwrap_or_default().to_string()
    }

    /// Opens a new tab (it does not become the current window); its handle.
    pub fn new_tab(&self) -> String {
        let tab = self.command("POST", "/window/new", Some(json!({ "type": "tab" })));
        tab["handle"].as_str().unwrap_or_default().to_string()
    }

    /// Makes the window `handle` the current one.
    pub fn switch_to(&self, handle: &str) {
        self.command("POST", "/window", Some(json!({ "handle": handle })));
    }

    /// The live processes in chromedriver's process group: chromedriver and the browser's.
    fn processes(&self) -> Vec<i32> {
        let group = self.driver.id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let stat = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|pid| {
                // pid (comm) state ppid pgrp ...; comm may hold anything, so split after ')'.
                stat(pid).is_some_and(|stat| {
                    let fields: Vec<&str> = stat
                        .rsplit_once(')')
                        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
                    matches!(fields[..], [state, _, pgrp, ..] if state != "Z" && pgrp == group)
                })
            })
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes the browser; bounded, as the browser may be what failed.
            let path = format!("/session/{}", self.session);
            let _ = self.exchange("DELETE", &path, None, Duration::from_secs(10));
        }
        // Whatever is left of the browser, then chromedriver; bounded, and only processes
        // of the group this test created.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left
                .into_iter()
                .filter(|&pid| pid != self.driver.id() as i32)
            {
                // SAFETY: kill() on a process of the group chromedriver was started in.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.driver.kill();
            let _ = self.driver.try_wait();
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
