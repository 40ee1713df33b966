//! `/metrics` read by real parsers (#32): one `# HELP` and one `# TYPE` per family, accepted by
//! `promtool check metrics` (in the text format 0.0.4 it reads) and by the Python client's
//! OpenMetrics parser, and scraped by a real Prometheus (OpenMetrics, which it asks for) that
//! gives back the request counts by status class through its query API.
//!
//! The tools are installed on first use under `target/tools/` (`util::prometheus`). Each checker
//! is first shown a duplicated family, which it must refuse: a checker that accepts anything
//! would prove nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::util::prometheus::{self, PrometheusServer};
use crate::util::{self, HostProcess};

const METRICS_PATH: &str = "/.well-known/echo-host/metrics";
const PATIENCE: Duration = Duration::from_secs(60);

/// The families split per label value before #32: the same name's `# HELP`/`# TYPE` again.
const DUPLICATED: &str = "# HELP echo_host_requests Responses sent, by status class.\n\
# TYPE echo_host_requests counter\n\
echo_host_requests_total{class=\"2xx\"} 1\n\
# HELP echo_host_requests Responses sent, by status class.\n\
# TYPE echo_host_requests counter\n\
echo_host_requests_total{class=\"4xx\"} 1\n\
# EOF\n";

/// A host serving the misbehave component, after 3 × 200 and 2 × 404 from the component.
fn host_after_known_requests() -> HostProcess {
    let misbehave = util::misbehave_wasm();
    let host = HostProcess::start(&["--component", misbehave.to_str().unwrap()], &[]);
    let client = reqwest::blocking::Client::builder().timeout(PATIENCE).build().unwrap();
    for (path, status) in
        [("/ok", 200), ("/ok?n=2", 200), ("/ok?n=3", 200), ("/nope", 404), ("/nope?n=2", 404)]
    {
        let response = client.get(host.url(path)).send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status().as_u16(), status, "GET {path}");
    }
    host
}

/// The host's `/metrics` text, and the `content-type` it came with.
fn scrape(host: &HostProcess, accept: &str) -> (String, String) {
    let response = reqwest::blocking::Client::new()
        .get(host.url(METRICS_PATH))
        .header("accept", accept)
        .send()
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    (response.text().unwrap(), content_type)
}

#[test]
fn every_family_has_one_help_and_one_type_line() {
    let host = host_after_known_requests();
    let (text, _) = scrape(&host, "*/*");
    for prefix in ["# HELP ", "# TYPE "] {
        let mut seen = BTreeMap::<&str, usize>::new();
        for line in text.lines().filter_map(|line| line.strip_prefix(prefix)) {
            *seen.entry(line.split(' ').next().unwrap()).or_default() += 1;
        }
        let repeated: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
        assert!(repeated.is_empty(), "`{prefix}` repeated for {repeated:?} in:\n{text}");
        assert!(seen.len() >= 30, "only {} families in:\n{text}", seen.len());
    }
    // The variants are labels of one family, each series listed once, in a fixed order.
    let requests: Vec<_> = text.lines().filter(|l| l.starts_with("echo_host_requests_total{")).collect();
    let expected = ["1xx 0", "2xx 3", "3xx 0", "4xx 2", "5xx 0"]
        .map(|pair| pair.split_once(' ').unwrap())
        .map(|(class, n)| format!("echo_host_requests_total{{class=\"{class}\"}} {n}"));
    assert_eq!(requests, expected, "{text}");
    for (family, labels) in [
        ("echo_host_connections_closed_total", ["{reason=\"header_timeout\"}", "{reason=\"idle\"}"]),
        ("echo_host_unsent_limit_total", ["{limit=\"connection\"}", "{limit=\"total\"}"]),
    ] {
        let series: Vec<_> = text.lines().filter(|l| l.starts_with(&format!("{family}{{"))).collect();
        let expected: Vec<_> = labels.iter().map(|labels| format!("{family}{labels} 0")).collect();
        assert_eq!(series, expected, "{text}");
    }
}

#[test]
fn promtool_check_metrics_accepts_metrics() {
    let (accepted, said) = prometheus::promtool_check_metrics(DUPLICATED);
    assert!(!accepted, "promtool accepted a duplicated family: {said}");
    assert!(said.contains("second HELP line"), "{said}");

    // promtool reads Prometheus's text format 0.0.4 (in OpenMetrics its lint finds every counter's
    // `_total` samples without help), which the host serves to a client asking for it.
    let host = host_after_known_requests();
    let (text, content_type) = scrape(&host, "text/plain; version=0.0.4");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(text.contains("\n# TYPE echo_host_requests_total counter\n"), "{text}");
    let (accepted, said) = prometheus::promtool_check_metrics(&text);
    eprintln!("{}: {said}", prometheus::version(&prometheus::promtool()));
    assert!(accepted, "promtool check metrics refused /metrics: {said}\n{text}");
    assert!(said.trim().is_empty(), "promtool found problems: {said}");
}

#[test]
fn the_python_openmetrics_parser_reads_every_family() {
    let error = prometheus::openmetrics_parse(DUPLICATED).expect_err("a duplicated family was parsed");
    assert!(error.contains("metadata after samples") || error.contains("Duplicate"), "{error}");

    let host = host_after_known_requests();
    // The host always answers OpenMetrics 1.0.0, which is what this parser reads.
    let (text, content_type) = scrape(&host, "application/openmetrics-text; version=1.0.0");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let families = prometheus::openmetrics_parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut names: Vec<_> = families.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "a family came twice: {names:?}");
    let requests = families.iter().find(|f| f.name == "echo_host_requests").expect("echo_host_requests");
    assert_eq!(requests.kind, "counter");
    let by_class: BTreeMap<_, _> = requests
        .samples
        .iter()
        .filter(|(name, ..)| name == "echo_host_requests_total")
        .map(|(_, labels, value)| (labels["class"].as_str(), *value))
        .collect();
    let expected = BTreeMap::from([("1xx", 0.0), ("2xx", 3.0), ("3xx", 0.0), ("4xx", 2.0), ("5xx", 0.0)]);
    assert_eq!(by_class, expected);
}

#[test]
fn prometheus_scrapes_requests_by_status_class() {
    let host = host_after_known_requests();
    let server = PrometheusServer::start(&host.addr.to_string(), METRICS_PATH);
    eprintln!("{}", prometheus::version(&prometheus::prometheus()));
    // Scrapes are host requests too (200): the 2xx count grows with them, the others must not.
    let deadline = Instant::now() + PATIENCE;
    let (by_class, up, component) = loop {
        let by_class: BTreeMap<String, f64> = server
            .query("echo_host_requests_total")
            .into_iter()
            .map(|(labels, value)| (labels["class"].as_str().unwrap().to_owned(), value))
            .collect();
        let up = server.query("up{job=\"echo-host\"}").first().map(|(_, value)| *value);
        let component: f64 = server.query("echo_host_version_requests_total").iter().map(|(_, v)| v).sum();
        if by_class.get("4xx") == Some(&2.0) || Instant::now() > deadline {
            break (by_class, up, component);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(up, Some(1.0), "the target is not up: {by_class:?}");
    let classes: Vec<_> = by_class.keys().map(String::as_str).collect();
    assert_eq!(classes, ["1xx", "2xx", "3xx", "4xx", "5xx"], "one series per class: {by_class:?}");
    assert_eq!(by_class["4xx"], 2.0, "{by_class:?}");
    assert!(by_class["2xx"] >= 3.0, "{by_class:?}");
    for class in ["1xx", "3xx", "5xx"] {
        assert_eq!(by_class[class], 0.0, "{by_class:?}");
    }
    // Only the component's requests count by version: exactly the five sent.
    assert_eq!(component, 5.0, "echo_host_version_requests_total");
}
