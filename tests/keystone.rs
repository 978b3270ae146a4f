//! Swift behind a real Keystone v3: password and application-credential logins, the
//! object-store endpoint from the catalog, TempURLs through the Keystone-authenticated
//! proxy. Keystone is installed by tests/setup.sh, like everything else the tests need.

use std::os::unix::fs::PermissionsExt;

use fusestream_tests::swift::{SwiftServer, curl_with_token, keystone_token};
use fusestream_tests::{FuseStream, Options, random_file, sha256, sha256_file, stderr};

#[test]
fn swift_behind_keystone_with_a_password_and_an_application_credential() {
    let swift = SwiftServer::start_with_keystone();
    let auth = swift.var("KEYSTONE_AUTH_URL").to_string();
    let storage = swift.var("SWIFT_KEYSTONE_STORAGE_URL").to_string();
    let token = keystone_token(
        &auth,
        swift.var("KEYSTONE_USER"),
        swift.var("KEYSTONE_PASSWORD"),
        swift.var("KEYSTONE_PROJECT"),
    );
    let inputs = tempfile::tempdir().unwrap();
    let src = inputs.path().join("obj.bin");
    let data = random_file(&src, 2_000_000);
    assert!(matches!(
        curl_with_token("PUT", &format!("{storage}/media"), &token, &[]),
        201 | 202
    ));
    let upload = format!("@{}", src.display());
    assert_eq!(
        curl_with_token(
            "PUT",
            &format!("{storage}/media/obj.bin"),
            &token,
            &["--data-binary", &upload]
        ),
        201
    );
    assert_eq!(
        curl_with_token(
            "POST",
            &storage,
            &token,
            &["-H", "X-Account-Meta-Temp-URL-Key: kskey"]
        ),
        204
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[remotes.ks]\ntype = \"swift\"\nauth_url = \"{auth}\"\nuser = \"{user}\"\nkey_env = \"KS_PASSWORD\"\nproject = \"{project}\"\n\
             [remotes.ksapp]\ntype = \"swift\"\nauth_url = \"{auth}\"\napplication_credential_id = \"{app}\"\n\
             application_credential_secret_env = \"KS_APP_SECRET\"\n\
             [remotes.kswrong]\ntype = \"swift\"\nauth_url = \"{auth}\"\nuser = \"{user}\"\nkey_env = \"WRONG\"\nproject = \"{project}\"\n",
            user = swift.var("KEYSTONE_USER"),
            project = swift.var("KEYSTONE_PROJECT"),
            app = swift.var("KEYSTONE_APP_CRED_ID"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fs = FuseStream::start_with(Options {
        config: Some(config),
        control_env: vec![
            ("KS_PASSWORD".into(), swift.var("KEYSTONE_PASSWORD").into()),
            (
                "KS_APP_SECRET".into(),
                swift.var("KEYSTONE_APP_CRED_SECRET").into(),
            ),
            ("WRONG".into(), "not-the-password".into()),
        ],
        ..Options::default()
    });

    fs.ctl_ok(["stage", "--name", "password.bin", "ks:media/obj.bin"]);
    assert_eq!(
        sha256_file(&fs.mountpoint.join("password.bin")),
        sha256(&data)
    );
    fs.ctl_ok(["stage", "--name", "appcred.bin", "ksapp:media/obj.bin"]);
    assert_eq!(
        sha256_file(&fs.mountpoint.join("appcred.bin")),
        sha256(&data)
    );
    let out = fs.ctl(["stage", "--name", "wrong.bin", "kswrong:media/obj.bin"]);
    assert!(
        stderr(&out).contains("unauthenticated: remote kswrong: login refused (HTTP 401)"),
        "{}",
        stderr(&out)
    );
    let secret = swift.var("KEYSTONE_APP_CRED_SECRET");
    for text in [fs.control.logs(), fs.mountd.logs(), fs.ctl_ok(["ls"])] {
        assert!(
            !text.contains(secret),
            "the application credential secret leaked"
        );
    }
}
