//! AWS Signature Version 4 for presigned S3 GET URLs (query-string authentication).
//!
//! Only the protocol composition is here; the cryptography is RustCrypto's HMAC and
//! SHA-256. Checked against AWS's published presigned-URL example (see the tests).
//! Presigned URLs sign only the `host` header and use `UNSIGNED-PAYLOAD`, so the mount
//! daemon can add `Range` and `If-Match` headers without breaking the signature.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::percent_encode;

/// Longest expiry S3 accepts for a presigned URL.
pub const MAX_EXPIRES_SECS: u64 = 7 * 24 * 3600;

/// Credentials used to sign.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, even in debug output.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What to presign.
pub struct Presign<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Host, with `:port` if not the default one.
    pub host: &'a str,
    /// The object's path, not yet percent-encoded (`/bucket/key` or `/key`).
    pub path: &'a str,
    /// Query parameters of the request itself (e.g. ListObjectsV2's `list-type=2`), not
    /// yet percent-encoded; signed with the rest.
    pub query: &'a [(&'a str, &'a str)],
    pub region: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub timestamp: &'a str,
    pub expires_secs: u64,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Returns the presigned GET URL (for an object, or with `query` for a listing).
pub fn presign_get(credentials: &Credentials, request: &Presign<'_>) -> String {
    let date = &request.timestamp[..8];
    let scope = format!("{date}/{}/s3/aws4_request", request.region);
    let mut query: Vec<(String, String)> = vec![
        ("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into()),
        (
            "X-Amz-Credential".into(),
            format!("{}/{scope}", credentials.access_key_id),
        ),
        ("X-Amz-Date".into(), request.timestamp.into()),
        (
            "X-Amz-Expires".into(),
            request.expires_secs.min(MAX_EXPIRES_SECS).to_string(),
        ),
        ("X-Amz-SignedHeaders".into(), "host".into()),
    ];
    query.extend(
        request
            .query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    if let Some(token) = &credentials.session_token {
        query.push(("X-Amz-Security-Token".into(), token.clone()));
    }
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k, false), percent_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_path = percent_encode(request.path, true);
    let canonical_request = format!(
        "GET\n{canonical_path}\n{canonical_query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
        request.host
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        request.timestamp,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date,
    );
    for part in [request.region, "s3", "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex::encode(hmac(&key, &string_to_sign));
    format!(
        "{}://{}{canonical_path}?{canonical_query}&X-Amz-Signature={signature}",
        request.scheme, request.host
    )
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC).
pub fn timestamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example: "Authenticating Requests: Using Query Parameters
    /// (AWS Signature Version 4)", GET examplebucket/test.txt.
    #[test]
    fn matches_the_aws_published_presigned_url_example() {
        let credentials = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let url = presign_get(
            &credentials,
            &Presign {
                scheme: "https",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                region: "us-east-1",
                timestamp: "20130524T000000Z",
                expires_secs: 86400,
                query: &[],
            },
        );
        assert_eq!(
            url,
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn encodes_keys_with_colons_and_spaces_and_caps_expiry() {
        let credentials = Credentials {
            access_key_id: "test:tester".into(),
            secret_access_key: "testing".into(),
            session_token: Some("tok/en".into()),
        };
        let url = presign_get(
            &credentials,
            &Presign {
                scheme: "http",
                host: "127.0.0.1:8080",
                path: "/bucket/dir/a file.bin",
                region: "us-east-1",
                timestamp: "20261124T000000Z",
                expires_secs: 30 * 24 * 3600,
                query: &[],
            },
        );
        assert!(url.starts_with("http://127.0.0.1:8080/bucket/dir/a%20file.bin?"));
        assert!(url.contains("X-Amz-Credential=test%3Atester%2F20261124%2F"));
        assert!(url.contains("X-Amz-Expires=604800&"));
        assert!(url.contains("X-Amz-Security-Token=tok%2Fen"));
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(timestamp(1_369_353_600), "20130524T000000Z");
        assert_eq!(timestamp(951_782_400 + 3661), "20000229T010101Z");
        assert_eq!(timestamp(0), "19700101T000000Z");
    }
}
