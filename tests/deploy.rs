//! The deployment files stay valid: systemd units pass `systemd-analyze verify` without a
//! single warning, launchd plists parse, the install script parses, and every flag these
//! files pass to a daemon is one the daemon has.

use std::collections::BTreeSet;
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
    let mut known = help_flags(program, &[]);
    if program == "fusestreamctl" {
        known.extend(help_flags(program, &["serve"]));
    }
    for flag in flags_in(text) {
        assert!(
            known.contains(&flag),
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

/// The `--flags` of `program ARGS --help` (its own `--help` and `--version` left out).
fn help_flags(program: &str, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(bin(program))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {args:?} --help failed");
    let help = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "  -h, --help  ..." or "      --name <NAME>  ..."
            let line = line.trim_start();
            let long = match line.as_bytes() {
                [b'-', short, b',', b' ', ..] if *short != b'-' => &line[4..],
                _ => line,
            };
            let flag = long.strip_prefix("--")?.split([' ', '<']).next()?;
            Some(format!("--{flag}"))
        })
        .collect::<Vec<_>>()
        .join(" ");
    flags_in(&help)
}

/// The `--flags` named in `text` (but `--help` and `--version`).
fn flags_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .filter(|w| !["--help", "--version"].contains(w))
        .map(str::to_string)
        .collect()
}

/// The part of README.md from `start` up to `end`.
fn readme_between(start: &str, end: &str) -> String {
    let readme = std::fs::read_to_string(deploy("../README.md")).unwrap();
    let from = readme
        .find(start)
        .unwrap_or_else(|| panic!("README: no {start:?}"));
    let rest = &readme[from..];
    let to = rest
        .find(end)
        .unwrap_or_else(|| panic!("README: no {end:?}"));
    rest[..to].to_string()
}

#[test]
fn the_readme_names_every_flag_of_both_daemons_and_the_cli_and_no_other() {
    let mountd = readme_between(
        "`fusestream-mountd` options:",
        "`fusestreamctl serve` options:",
    );
    assert_eq!(
        flags_in(&mountd),
        help_flags("fusestream-mountd", &[]),
        "README (Running the daemons) against fusestream-mountd --help"
    );
    let serve = readme_between("`fusestreamctl serve` options:", "Both daemons send");
    assert_eq!(
        flags_in(&serve),
        help_flags("fusestreamctl", &["serve"]),
        "README (Running the daemons) against fusestreamctl serve --help"
    );
    let synopsis = readme_between("## Command line", "- `stage` takes");
    let mut commands = Vec::new();
    for line in synopsis.lines().filter(|l| l.starts_with("fusestreamctl ")) {
        let command = line
            .split_whitespace()
            .skip(1)
            .find(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            .expect("a subcommand");
        assert_eq!(
            flags_in(line),
            help_flags("fusestreamctl", &[command]),
            "README (Command line) against fusestreamctl {command} --help"
        );
        commands.push(command.to_string());
    }
    // Every subcommand but `serve` (see Running the daemons) is in the synopsis.
    let help = Command::new(bin("fusestreamctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let listed: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("Options:").next())
        .expect("a Commands section")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| !["serve", "help"].contains(c))
        .collect();
    let mut expected = commands.clone();
    expected.sort();
    let mut listed: Vec<String> = listed.into_iter().map(str::to_string).collect();
    listed.sort();
    assert_eq!(
        expected, listed,
        "README (Command line) against fusestreamctl --help"
    );
}

#[test]
fn stage_help_names_every_source_form() {
    let out = Command::new(bin("fusestreamctl"))
        .args(["stage", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for form in ["local file", "http://", "https://", "REMOTE:path"] {
        assert!(
            help.contains(form),
            "stage --help does not name {form}:\n{help}"
        );
    }
}
