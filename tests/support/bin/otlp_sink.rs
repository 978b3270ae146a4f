//! `fusestream-otlp-sink`: the tests' OTLP trace receiver as a program, for the benchmark
//! (spans need somewhere real to go when measuring export overhead) and for looking at
//! where time goes. Prints `grpc http://ADDR` and `http http://ADDR` on stdout, then
//! receives until stdin closes, and prints on stderr how many spans it received and, per
//! span name, how many and their median and p99 durations.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

fn main() {
    let sink = fusestream_tests::otlp::OtlpSink::start();
    println!("grpc {}", sink.grpc_endpoint());
    println!("http {}", sink.http_endpoint());
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    let spans = sink.spans();
    eprintln!("spans received: {}", spans.len());
    let mut by_name: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for span in &spans {
        let took = span.end.duration_since(span.start).unwrap_or_default();
        by_name.entry(&span.name).or_default().push(took);
    }
    for (name, mut took) in by_name {
        took.sort();
        let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "{name}: {} spans, p50 {:?}, p99 {:?}",
            took.len(),
            at(0.5),
            at(0.99)
        );
    }
}
