//! `fusestream-otlp-sink`: the tests' OTLP trace receiver as a program, for the benchmark
//! (spans need somewhere real to go when measuring export overhead). Prints
//! `grpc http://ADDR` and `http http://ADDR` on stdout, then receives until stdin closes,
//! and prints how many spans it received on stderr.

use std::io::Read;

fn main() {
    let sink = fusestream_tests::otlp::OtlpSink::start();
    println!("grpc {}", sink.grpc_endpoint());
    println!("http {}", sink.http_endpoint());
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    eprintln!("spans received: {}", sink.spans().len());
}
