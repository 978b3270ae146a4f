//! The gRPC API through the real grpcurl, using server reflection (no .proto files).

use fusestream_tests::{FuseStream, grpcurl, grpcurl_ok, random_file, sha256, sha256_file};

#[test]
fn list_describe_health_and_stage_through_grpcurl() {
    let fs = FuseStream::start();
    let addr = fs.listen.as_str();
    // Every call on TCP carries the API token (README: gRPC API).
    let auth = fs.auth_header();
    let with_auth = |args: &[&str]| -> Vec<String> {
        let mut with: Vec<String> = Vec::new();
        if !args.contains(&"-unix") {
            with.extend(["-H".to_string(), auth.clone()]);
        }
        with.extend(args.iter().map(|a| a.to_string()));
        with
    };
    let grpcurl_ok = |args: &[&str]| {
        grpcurl_ok(
            &with_auth(args)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    };
    let grpcurl = |args: &[&str]| {
        grpcurl(
            &with_auth(args)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    };

    let services = grpcurl_ok(&["-plaintext", addr, "list"]);
    for expected in ["fusestream.v1.Control", "grpc.health.v1.Health"] {
        assert!(
            services.lines().any(|l| l == expected),
            "{expected} missing from:\n{services}"
        );
    }
    assert!(services.contains("grpc.reflection."), "{services}");
    assert!(
        !services.contains("fusestream.v1.Mount"),
        "the control plane does not serve Mount"
    );
    // Absolute socket paths: grpcurl 1.8 sends them as :authority (see third_party/).
    let sock = fs.control_socket.to_str().unwrap();
    assert!(sock.starts_with('/'));
    assert!(grpcurl_ok(&["-unix", "-plaintext", sock, "list"]).contains("fusestream.v1.Control"));
    let mountd = fs.mountd_socket.to_str().unwrap();
    let mount_services = grpcurl_ok(&["-unix", "-plaintext", mountd, "list"]);
    assert!(
        mount_services.lines().any(|l| l == "fusestream.v1.Mount"),
        "{mount_services}"
    );

    let described = grpcurl_ok(&[
        "-plaintext",
        addr,
        "describe",
        "fusestream.v1.Control.Stage",
    ]);
    assert!(
        described.contains(
            "rpc Stage ( .fusestream.v1.StageRequest ) returns ( .fusestream.v1.StageResponse )"
        ),
        "{described}"
    );
    let message = grpcurl_ok(&["-plaintext", addr, "describe", "fusestream.v1.StageRequest"]);
    assert!(
        message.contains("string source = 1;") && message.contains("bool replace = 3;"),
        "{message}"
    );

    for service in ["fusestream.v1.Control", ""] {
        let body = format!("{{\"service\":\"{service}\"}}");
        let health = grpcurl_ok(&[
            "-plaintext",
            "-d",
            &body,
            addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(health.contains("SERVING"), "{health}");
    }

    let src = fs.input("via-grpc.bin");
    let data = random_file(&src, 2_000_000);
    let body = format!(
        "{{\"source\":\"{}\",\"name\":\"api/via-grpc.bin\"}}",
        src.display()
    );
    let staged = grpcurl_ok(&[
        "-plaintext",
        "-d",
        &body,
        addr,
        "fusestream.v1.Control/Stage",
    ]);
    let path = fs.mountpoint.join("api/via-grpc.bin");
    assert!(
        staged.contains(&format!("\"path\": \"{}\"", path.display())),
        "{staged}"
    );
    assert!(staged.contains("\"size\": \"2000000\""), "{staged}");
    assert_eq!(sha256_file(&path), sha256(&data));

    // Bad input: a clean status with a message.
    let bad_requests = [
        (
            format!(
                "{{\"source\":\"{}\",\"name\":\"a\\u0000b\"}}",
                src.display()
            ),
            "InvalidArgument",
            "NUL",
        ),
        (
            "{\"source\":\"relative/path\"}".to_string(),
            "InvalidArgument",
            "neither an absolute path",
        ),
        (
            "{\"source\":\"/no/such/file\"}".to_string(),
            "NotFound",
            "/no/such/file does not exist",
        ),
        (body.clone(), "AlreadyExists", "already staged"),
    ];
    for (request, code, text) in bad_requests {
        let out = grpcurl(&[
            "-plaintext",
            "-d",
            &request,
            addr,
            "fusestream.v1.Control/Stage",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{request} succeeded");
        assert!(
            err.contains(&format!("Code: {code}")) && err.contains(text),
            "{request}: {err}"
        );
    }

    // A URL that is not http(s) is refused by the mount daemon itself.
    let add =
        "{\"entry\":{\"name\":\"x\",\"url\":\"file:///etc/shadow\",\"version\":{\"size\":\"1\"}}}";
    let out = grpcurl(&[
        "-unix",
        "-plaintext",
        "-d",
        add,
        mountd,
        "fusestream.v1.Mount/AddEntry",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Code: InvalidArgument") && err.contains("http:// or https://"),
        "{err}"
    );
}
