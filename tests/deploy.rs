//! The deployment files stay valid: systemd units pass `systemd-analyze verify` without a
//! single warning, launchd plists parse, the install script parses, and every flag these
//! files pass to a daemon is one the daemon has.

use std::path::{Path, PathBuf};
use std::process::Command;

use fusestream_tests::{bin, tool};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// The `--flags` in `text` after `program`'s name, checked against its `--help`.
fn assert_flags_exist(file: &str, text: &str, program: &str) {
    let help = Command::new(bin(program)).arg("--help").output().unwrap();
    let mut help = String::from_utf8_lossy(&help.stdout).into_owned();
    if program == "fusestreamctl" {
        let serve = Command::new(bin(program))
            .args(["serve", "--help"])
            .output()
            .unwrap();
        help.push_str(&String::from_utf8_lossy(&serve.stdout));
    }
    for flag in text
        .split(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == '"')
        .filter(|w| w.starts_with("--") && w.len() > 2)
    {
        assert!(
            help.contains(flag),
            "{file} passes {flag}, which {program} does not have"
        );
    }
}

#[test]
fn systemd_units_verify_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for (unit, program, user) in [
        ("fusestream-mountd.service", "fusestream-mountd", false),
        ("fusestream.service", "fusestreamctl", true),
    ] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).unwrap();
        let exec = text
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart");
        assert_flags_exist(unit, exec, program);
        // The binaries are not installed here: point the unit at the ones just built.
        let local = text.replace(
            &format!("/usr/local/bin/{program}"),
            bin(program).to_str().unwrap(),
        );
        let path = dir.path().join(unit);
        std::fs::write(&path, local).unwrap();
        let runtime = dir.path().join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        let mut verify = Command::new(tool("systemd-analyze"));
        verify.arg("verify").arg("--man=no");
        if user {
            verify.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
        }
        let out = verify.arg(&path).output().expect("run systemd-analyze");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}:\n{said}"
        );
    }
}

#[test]
fn launchd_plists_parse_and_pass_real_flags() {
    for (plist, program) in [
        ("org.fusestream.mountd.plist", "fusestream-mountd"),
        ("org.fusestream.control.plist", "fusestreamctl"),
    ] {
        let path = deploy(&format!("launchd/{plist}"));
        let out = Command::new(tool("python3"))
            .args([
                "-c",
                "import plistlib, sys; d = plistlib.load(open(sys.argv[1], 'rb')); \
                 assert d['Label'] and d['ProgramArguments'][0].startswith('/'), d",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{plist}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_flags_exist(plist, &std::fs::read_to_string(&path).unwrap(), program);
    }
}

#[test]
fn the_install_and_quickstart_scripts_parse() {
    for script in ["install.sh", "quickstart.sh"] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(deploy(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
