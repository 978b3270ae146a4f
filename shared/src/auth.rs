//! The control plane's API token: what a TCP caller must show, since TCP (unlike the Unix
//! socket) carries no peer credentials and any local user may connect to 127.0.0.1.
//!
//! One random 256-bit token per control plane, in a file only its user can read
//! (`control.token` next to the control socket, mode 0600, in a directory checked by
//! `paths::private_dir`). Callers send it as gRPC metadata `authorization: Bearer <token>`;
//! the CLI reads the file itself, grpcurl gets it with `-H`. The comparison takes the same
//! time wherever the first difference is. The token is kept across restarts while the file
//! is intact and private, so scripts holding it keep working; delete the file to rotate it.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Hex characters of a token.
const TOKEN_HEX: usize = 64;

/// A bearer token. Never printed: `Debug` shows `<token>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<token>")
    }
}

impl Token {
    pub fn generate() -> io::Result<Token> {
        let mut bytes = [0u8; TOKEN_HEX / 2];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The `authorization` metadata value that carries this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// True if `header` (an `authorization` value) carries this token. Constant time in
    /// the token's content.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(presented) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        constant_time_eq(presented, self.0.as_bytes())
    }

    /// Reads the token in `path`, refusing a file that is not a private regular file of
    /// ours (a symlink, or readable by others: someone else may know it or have put it
    /// there).
    pub fn read(path: &Path) -> io::Result<Token> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let meta = file.metadata()?;
        let me = crate::paths::euid();
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a private file of uid {me} (owner {}, mode {:o}): not used",
                    path.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        let mut text = String::new();
        (&file).take(4096).read_to_string(&mut text)?;
        let text = text.trim();
        if text.len() != TOKEN_HEX || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} does not hold a token", path.display()),
            ));
        }
        Ok(Token(text.to_string()))
    }

    /// The token in `path` if it is intact and private, else a new one written there
    /// (atomically, mode 0600). The directory must already be checked private.
    pub fn load_or_create(path: &Path) -> io::Result<Token> {
        match Token::read(path) {
            Ok(token) => return Ok(token),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("API token: {e}; writing a new one"),
        }
        let token = Token::generate()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(format!("{}\n", token.0).as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(token)
    }
}

/// Equal content, compared without an early exit (the length of a token is public).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box: keep the compiler from turning the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let token = Token::generate().unwrap();
        let good = token.header_value();
        assert!(token.accepts(Some(good.as_bytes())));
        assert!(!token.accepts(None));
        assert!(!token.accepts(Some(b"")));
        assert!(!token.accepts(Some(token.0.as_bytes())), "scheme required");
        assert!(!token.accepts(Some(format!("Basic {}", token.0).as_bytes())));
        let mut wrong = good.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
        assert!(!token.accepts(Some(&wrong)));
        assert!(!token.accepts(Some(format!("{good}0").as_bytes())));
        assert_eq!(format!("{token:?}"), "<token>");
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }

    #[test]
    fn token_files_are_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.token");
        let token = Token::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Token::load_or_create(&path).unwrap(), token, "kept");
        // Readable by others: not trusted, replaced.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Token::read(&path).is_err());
        let new = Token::load_or_create(&path).unwrap();
        assert_ne!(new, token);
        // A symlink is never followed.
        let link = dir.path().join("link.token");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Token::read(&link).is_err());
    }
}
