//! Open-loop load (wrk2-style): requests are sent on a fixed schedule whatever the server does,
//! and each latency counts from the time the request was *due*, not from when it could be sent.
//! A server that stalls therefore shows its stall in every request that should have gone out
//! meanwhile, instead of hiding it by slowing the client down (coordinated omission).
//!
//! One thread, `connections` keep-alive connections, each sending every `connections / rate`
//! seconds (staggered), epoll through mio, spinning only in the last millisecond before a send.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::http1;

/// What one open-loop run measured.
#[derive(Debug, Clone, Default)]
pub struct OpenLoopResult {
    /// Responses per second actually completed in the measured window.
    pub achieved: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub responses: u64,
    /// Non-2xx responses, broken connections and requests still unanswered at the end.
    pub errors: u64,
    /// Responses by `echo-host-component` header (swaps under load).
    pub by_component: BTreeMap<String, u64>,
}

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_at: usize,
    /// The due time of the request in flight.
    in_flight: Option<Instant>,
    next_due: Instant,
}

/// Sends `request` at `rate` per second over `connections` for `warmup + duration` (or until
/// `stop` is set); latencies of requests due during the warm-up are not counted.
pub fn run(
    addr: SocketAddr,
    request: &[u8],
    connections: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<OpenLoopResult> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + warmup;
    let mut end = measure_from + duration;
    let mut conns = Vec::with_capacity(connections);
    for i in 0..connections {
        let offset = interval.mul_f64(i as f64 / connections as f64);
        let stream = connect(addr)?;
        let mut conn = Conn {
            stream,
            inbuf: Vec::with_capacity(4096),
            out: Vec::new(),
            out_at: 0,
            in_flight: None,
            next_due: start + offset,
        };
        poll.registry().register(&mut conn.stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        conns.push(conn);
    }
    let mut latencies_us: Vec<u32> = Vec::with_capacity((rate * duration.as_secs_f64() * 1.2) as usize + 16);
    let mut result = OpenLoopResult::default();
    let mut chunk = vec![0u8; 64 * 1024];
    // After the last send, wait this long for the answers still in flight.
    let mut drain_until = end + Duration::from_secs(5);

    loop {
        let now = Instant::now();
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) && now < end {
            end = now.max(measure_from);
            drain_until = end + Duration::from_secs(5);
        }
        let mut earliest: Option<Instant> = None;
        let mut busy = false;
        for conn in conns.iter_mut() {
            if conn.in_flight.is_none() && conn.next_due < end {
                if conn.next_due <= now {
                    conn.in_flight = Some(conn.next_due);
                    conn.next_due += interval;
                    conn.out.clear();
                    conn.out.extend_from_slice(request);
                    conn.out_at = 0;
                    flush(conn)?;
                } else {
                    earliest = Some(earliest.map_or(conn.next_due, |e: Instant| e.min(conn.next_due)));
                }
            }
            busy |= conn.in_flight.is_some();
        }
        if now >= end && !busy {
            break;
        }
        if now >= drain_until {
            result.errors += conns.iter().filter(|c| c.in_flight.is_some()).count() as u64;
            break;
        }
        let timeout = match earliest {
            Some(due) => {
                let wait = due.saturating_duration_since(Instant::now());
                // epoll waits in whole milliseconds: sleep until a millisecond before, then spin.
                if wait > Duration::from_millis(2) { wait - Duration::from_millis(1) } else { Duration::ZERO }
            }
            None => Duration::from_millis(10),
        };
        poll.poll(&mut events, Some(timeout))?;
        for event in events.iter() {
            let index = event.token().0;
            let conn = &mut conns[index];
            if event.is_writable() && conn.out_at < conn.out.len() {
                flush(conn)?;
            }
            if !event.is_readable() {
                continue;
            }
            let mut closed = false;
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => conn.inbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let mut reconnect = closed;
            while let Some(parsed) = http1::parse_response(&conn.inbuf)? {
                conn.inbuf.drain(..parsed.consumed);
                let done = Instant::now();
                if let Some(due) = conn.in_flight.take()
                    && due >= measure_from
                {
                    let latency = done.saturating_duration_since(due);
                    latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                    result.responses += 1;
                    if !(200..300).contains(&parsed.status) {
                        result.errors += 1;
                    }
                    *result
                        .by_component
                        .entry(parsed.component.unwrap_or_else(|| "-".into()))
                        .or_default() += 1;
                }
                reconnect |= parsed.close;
            }
            if reconnect {
                if conn.in_flight.take().is_some() {
                    // The connection broke with a request unanswered.
                    result.errors += 1;
                }
                poll.registry().deregister(&mut conn.stream)?;
                conn.stream = connect(addr)?;
                conn.inbuf.clear();
                poll.registry().register(
                    &mut conn.stream,
                    Token(index),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
            }
        }
    }
    latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((latencies_us.len() as f64 * p).ceil() as usize).clamp(1, latencies_us.len()) - 1;
        latencies_us[index] as f64 / 1000.0
    };
    result.p50_ms = pct(0.50);
    result.p99_ms = pct(0.99);
    result.p999_ms = pct(0.999);
    result.max_ms = latencies_us.last().map_or(f64::NAN, |&m| m as f64 / 1000.0);
    result.achieved = result.responses as f64 / end.saturating_duration_since(measure_from).as_secs_f64();
    Ok(result)
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream))
}

fn flush(conn: &mut Conn) -> anyhow::Result<()> {
    while conn.out_at < conn.out.len() {
        match conn.stream.write(&conn.out[conn.out_at..]) {
            Ok(n) => conn.out_at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A broken connection shows up on the read side.
            Err(_) => break,
        }
    }
    Ok(())
}
