//! `/metrics` of a running service, read the way Prometheus does: one
//! plain HTTP/1.1 GET, the OpenMetrics body, and a sample's value by its
//! series (name and labels exactly as exposed).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    time::{Instant, sleep},
};

use super::process::POLL;

/// `GET /metrics` at `addr`: the body (panics on anything but a 200).
pub async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to /metrics at {addr}: {e}"));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the sample `series` in `body`, 0 when absent (a counter
/// nothing has counted yet).
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Polls `/metrics` at `addr` until `series` is at least `want`; its value
/// then. Panics after `within`, with the last value seen.
pub async fn wait_at_least(addr: SocketAddr, series: &str, want: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let got = sample(&scrape(addr).await, series);
        if got >= want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{series} at {addr} is {got} after {within:?}, want at least {want}"
        );
        sleep(POLL).await;
    }
}
