//! The rules for entry names (paths inside the mount), checked in one place by both
//! daemons: the control plane to fail early with a clear message, the mount daemon
//! because it is the trust boundary.
//!
//! A name is a relative, `/`-separated path. Directories appear implicitly. Refused:
//! empty names, empty components (leading, trailing or doubled `/`), `.` and `..`
//! components, NUL bytes and other control characters (C0, DEL, C1: a name shows up in
//! listings and terminals, where `\n` or an escape sequence would forge output),
//! components longer than NAME_MAX and names longer than PATH_MAX.

use thiserror::Error;

/// Longest component the kernel accepts (bytes).
pub const NAME_MAX: usize = 255;
/// Longest name accepted (bytes, excluding the terminating NUL the kernel counts).
pub const PATH_MAX: usize = 4095;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name contains a NUL byte")]
    Nul,
    #[error("name contains the control character {0:?}")]
    Control(char),
    #[error("name is {0} bytes long; the limit is {PATH_MAX}")]
    TooLong(usize),
    #[error("name has an empty component (leading, trailing or doubled '/')")]
    EmptyComponent,
    #[error("name has a '{0}' component")]
    DotComponent(&'static str),
    #[error("component {component:?} is {len} bytes long; the limit is {NAME_MAX}")]
    ComponentTooLong { component: String, len: usize },
}

/// Checks `name` and returns its components.
pub fn components(name: &str) -> Result<Vec<&str>, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(NameError::Control(c));
    }
    if name.len() > PATH_MAX {
        return Err(NameError::TooLong(name.len()));
    }
    name.split('/')
        .map(|component| match component {
            "" => Err(NameError::EmptyComponent),
            "." => Err(NameError::DotComponent(".")),
            ".." => Err(NameError::DotComponent("..")),
            c if c.len() > NAME_MAX => Err(NameError::ComponentTooLong {
                component: c.chars().take(32).collect::<String>() + "...",
                len: c.len(),
            }),
            c => Ok(c),
        })
        .collect()
}

/// Characters of a name an error message shows; the rest is cut (names come from callers
/// and may be huge, and a message travels in one HTTP/2 header).
pub const SHOWN_CHARS: usize = 64;

/// `name` as error messages show it: quoted, cut after [`SHOWN_CHARS`] characters.
pub fn shown(name: &str) -> String {
    match name.char_indices().nth(SHOWN_CHARS) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &name[..cut], name.len()),
    }
}

/// Whether entry `name` lies under folder `folder` (given with or without its trailing
/// '/'): `photos/2024/a.jpg` is under `photos` and `photos/2024/`, not under `phot`.
pub fn is_under(name: &str, folder: &str) -> bool {
    let folder = folder.trim_end_matches('/');
    !folder.is_empty()
        && name
            .strip_prefix(folder)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Checks `name` without keeping its components.
pub fn validate(name: &str) -> Result<(), NameError> {
    components(name).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_a_folder() {
        assert!(is_under("photos/2024/a.jpg", "photos"));
        assert!(is_under("photos/2024/a.jpg", "photos/2024/"));
        assert!(!is_under("photos/2024/a.jpg", "phot"));
        assert!(!is_under("photos", "photos"));
        assert!(!is_under("photos/a", ""));
        assert!(!is_under("photos/a", "/"));
    }

    #[test]
    fn accepts_plain_and_nested_names() {
        assert_eq!(components("video.mp4").unwrap(), ["video.mp4"]);
        assert_eq!(components("a/b/c.bin").unwrap(), ["a", "b", "c.bin"]);
        assert_eq!(components("..hidden/x..y").unwrap(), ["..hidden", "x..y"]);
        assert_eq!(
            components("ünï/файл 🦀.bin").unwrap(),
            ["ünï", "файл 🦀.bin"]
        );
    }

    #[test]
    fn messages_show_names_quoted_and_bounded() {
        assert_eq!(shown("a\nb"), r#""a\nb""#);
        let long = "ü".repeat(70_000);
        let cut = shown(&long);
        assert!(cut.len() < 200, "{cut}");
        assert!(cut.ends_with("... (140000 bytes)"), "{cut}");
        assert_eq!(shown(&"x".repeat(SHOWN_CHARS)).len(), SHOWN_CHARS + 2);
    }

    #[test]
    fn refuses_bad_names_with_the_reason() {
        assert_eq!(validate(""), Err(NameError::Empty));
        assert_eq!(validate("a\0b"), Err(NameError::Nul));
        assert_eq!(validate("a\nb"), Err(NameError::Control('\n')));
        assert_eq!(validate("esc\x1b[31m"), Err(NameError::Control('\x1b')));
        assert_eq!(validate("del\x7f"), Err(NameError::Control('\x7f')));
        assert_eq!(validate("csi\u{9b}"), Err(NameError::Control('\u{9b}')));
        assert_eq!(validate("/abs"), Err(NameError::EmptyComponent));
        assert_eq!(validate("a//b"), Err(NameError::EmptyComponent));
        assert_eq!(validate("dir/"), Err(NameError::EmptyComponent));
        assert_eq!(
            validate("../etc/passwd"),
            Err(NameError::DotComponent(".."))
        );
        assert_eq!(validate("a/./b"), Err(NameError::DotComponent(".")));
        assert!(matches!(
            validate(&"x".repeat(NAME_MAX + 1)),
            Err(NameError::ComponentTooLong { len: 256, .. })
        ));
        assert_eq!(validate(&"x".repeat(NAME_MAX)), Ok(()));
        let long = vec!["d".repeat(200); 21].join("/");
        assert_eq!(validate(&long), Err(NameError::TooLong(long.len())));
    }
}
