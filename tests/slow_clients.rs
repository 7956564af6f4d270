//! Slow and malformed clients against the real `kiln` binary: connections
//! that never finish their headers are closed after
//! `http.header_read_timeout_ms`, one address holds at most
//! `http.max_connections_per_ip` connections, a body declared over the
//! limit is refused before it is read (no `100 Continue`), and other
//! clients are served meanwhile. Bounds on time are generous: the machine
//! running the tests is shared.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{Kiln, kiln};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// The start of a request whose head never ends (no blank line).
const PARTIAL_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Slow: ";

async fn start(header_timeout_ms: u64, per_ip: usize) -> Kiln {
    let k = kiln(&[])
        .env("KILN_HTTP_HEADER_READ_TIMEOUT_MS", header_timeout_ms)
        .env("KILN_HTTP_MAX_CONNECTIONS_PER_IP", per_ip)
        .spawn();
    k.wait_http(k.http, "/readyz").await;
    k
}

/// Open file descriptors of the process.
fn fds(k: &Kiln) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", k.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A connection from `local` (any 127.0.0.0/8 address is this machine).
async fn connect_from(local: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the server closes the connection (or resets it), or
/// `within` passes. `None`: still open.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

/// One request on a fresh connection from `local`; the whole answer.
async fn request_from(local: [u8; 4], to: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect_from(local, to).await;
    stream.write_all(request).await.unwrap();
    let got = read_to_close(&mut stream, Duration::from_secs(30))
        .await
        .expect("the answer never ended");
    String::from_utf8_lossy(&got).into_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_headers_are_closed_after_the_timeout() {
    const N: usize = 200;
    const TIMEOUT: Duration = Duration::from_secs(2);
    let k = start(TIMEOUT.as_millis() as u64, 1000).await;
    let before = fds(&k);
    let mut slow = Vec::new();
    for _ in 0..N {
        let mut s = TcpStream::connect(k.http).await.unwrap();
        s.write_all(PARTIAL_HEAD).await.unwrap();
        slow.push(s);
    }
    let opened = Instant::now();
    let peak = fds(&k);
    // Everyone else is served meanwhile.
    let answer = request_from([127, 0, 0, 1], k.http, HEALTHZ).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Each is closed within the timeout and a generous margin.
    let deadline = opened + TIMEOUT + Duration::from_secs(10);
    let mut still_open = 0;
    for s in &mut slow {
        let left = deadline.saturating_duration_since(Instant::now());
        match read_to_close(s, left).await {
            Some(got) => assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got)),
            None => still_open += 1,
        }
    }
    let closed_after = opened.elapsed();
    assert_eq!(
        still_open, 0,
        "of {N} slow connections, open after {closed_after:?}"
    );
    // The server let go of their descriptors.
    let mut after = fds(&k);
    let settle = Instant::now() + Duration::from_secs(10);
    while after + N / 2 > peak && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = fds(&k);
    }
    eprintln!(
        "{N} slow connections: all closed {closed_after:?} after the last was opened \
         (header timeout {TIMEOUT:?}); server descriptors {before} before, {peak} with them open, {after} after"
    );
    assert!(
        after + N / 2 <= peak,
        "descriptors: {before} -> {peak} -> {after}"
    );

    // A client that is slow but finishes its head in time is served.
    let mut s = TcpStream::connect(k.http).await.unwrap();
    s.write_all(PARTIAL_HEAD).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(30))
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_over_the_limit_is_refused_before_it_is_read() {
    let k = start(20_000, 256).await;
    // 1 TB announced, nothing sent: 413 at once, never `100 Continue`.
    for expect in ["Expect: 100-continue\r\n", ""] {
        let request = format!(
            "POST /v1/auth/register HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
             {expect}Content-Length: 1000000000000\r\n\r\n"
        );
        let mut s = TcpStream::connect(k.http).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let got = read_to_close(&mut s, Duration::from_secs(30))
            .await
            .expect("the connection stayed open after a 1 TB body was announced");
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 413 "), "{expect:?}: {got}");
        assert!(!got.contains("100 Continue"), "{expect:?}: {got}");
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 413, "{body}");
        assert_eq!(problem["code"], "payload_too_large", "{body}");
    }

    // Within the limit, `Expect: 100-continue` is still honoured: the
    // server asks for the body and judges it.
    let body = r#"{"email":"nobody@example.com","password":"wrong password"}"#;
    let mut s = TcpStream::connect(k.http).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/auth/login HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut first = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut first))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(30))
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 401 "), "{got}");

    // A request target over 8000 bytes: 414 as a problem. A head over
    // `http.max_header_bytes` is refused by the HTTP parser itself: 431
    // with no body (hyper writes it; kiln cannot add one).
    let long = format!(
        "GET /v1/jobs?cursor={} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    let got = request_from([127, 0, 0, 1], k.http, long.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 414 "), "{got}");
    assert!(got.contains("\"code\":\"uri_too_long\""), "{got}");
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let got = request_from([127, 0, 0, 1], k.http, huge.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_connections_and_others_are_served() {
    const LIMIT: usize = 20;
    // A long header timeout: the held connections stay for the test.
    let k = start(60_000, LIMIT).await;
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut s = connect_from([127, 0, 0, 1], k.http).await;
        s.write_all(PARTIAL_HEAD).await.unwrap();
        held.push(s);
    }
    // Give the server the moment to account for them all.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // One more from the same address: 429 as a problem, and closed.
    let mut extra = connect_from([127, 0, 0, 1], k.http).await;
    let got = read_to_close(&mut extra, Duration::from_secs(10))
        .await
        .expect("a connection over the address's limit stayed open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 429 "), "{got}");
    let (_, body) = got.split_once("\r\n\r\n").unwrap();
    let problem: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(problem["code"], "too_many_connections", "{body}");

    // Another address is served meanwhile.
    let answer = request_from([127, 0, 0, 2], k.http, HEALTHZ).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = request_from([127, 0, 0, 1], k.http, HEALTHZ).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            answer.starts_with("HTTP/1.1 429") && Instant::now() < deadline,
            "{answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = k.log_text();
    assert!(log.contains("http.max_connections_per_ip"), "{log}");
    assert!(
        !log.contains("127.0.0.1\""),
        "the address was logged: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_slow_clients_open_still_stops_within_the_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let mut k = start(TIMEOUT.as_millis() as u64, 1000).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(k.http).await.unwrap();
        s.write_all(PARTIAL_HEAD).await.unwrap();
        slow.push(s);
    }
    let stopped = Instant::now();
    k.signal(nix::sys::signal::Signal::SIGTERM);
    let status = k.wait_exit(TIMEOUT + Duration::from_secs(25)).await;
    assert!(status.success(), "{status:?}: {}", k.log_text());
    eprintln!(
        "stopped {:?} after SIGTERM with 50 slow connections open",
        stopped.elapsed()
    );
}
