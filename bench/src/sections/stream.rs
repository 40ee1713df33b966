//! Streaming: a large POST echoed back on one connection, its throughput (both directions at
//! once) and the server's peak RSS growth.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::*;
use crate::http1;
use crate::procfs;
use crate::servers::RssSampler;

/// A `bytes`-long POST echoed back on one connection: throughput (both directions at once) and
/// the server's peak RSS growth over its RSS before the request.
pub fn streaming(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let echo = paths.echo_wasm.display().to_string();
    let specs = vec![
        Spec::new(
            ECHO_HOST,
            &paths.echo_host,
            &["--listen-addr", "127.0.0.1", "--port", "{port}", "--max-body", "2GiB", "--component", &echo],
        ),
        Spec::new(WASMTIME, &paths.wasmtime, &["serve", "--addr", "127.0.0.1:{port}", &echo]),
        Spec::new(NATIVE, &paths.native_echo, &["{port}"]),
    ];
    let mut servers = Vec::new();
    for spec in &specs {
        servers.push(start(paths, spec, SERVER_CORES)?);
    }
    for round in 0..opts.rounds {
        for server in order(&servers, round) {
            std::thread::sleep(Duration::from_millis(200));
            let before = server.memory().rss_kib;
            procfs::reset_peak(server.pid);
            let sampler = RssSampler::start(server.pid, Duration::from_millis(20));
            let elapsed = stream_echo(server.addr, opts.stream_bytes)?;
            let sampled_peak = sampler.finish().rss_kib;
            let peak = server.memory().hwm_kib.max(sampled_peak);
            let growth = peak.saturating_sub(before) as f64 / MIB;
            let mbps = opts.stream_bytes as f64 / elapsed.as_secs_f64() / 1e6;
            progress(&format!(
                "round {} stream {}: {:.0} MB/s, peak RSS growth {growth:.1} MiB",
                round + 1,
                server.name,
                mbps
            ));
            samples.add("stream.mbps", &server.name, mbps);
            samples.add("stream.growth_mib", &server.name, growth);
        }
    }
    for server in servers {
        server.stop();
    }
    Ok(())
}

/// Sends a `size`-byte POST and reads the echo at the same time; the time from connect to the
/// last byte back.
pub fn stream_echo(addr: SocketAddr, size: u64) -> anyhow::Result<Duration> {
    const CHUNK: usize = 1024 * 1024;
    let started = Instant::now();
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        let head = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        );
        writer.write_all(head.as_bytes())?;
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            writer.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let mut reader = stream;
    reader.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = vec![0u8; CHUNK];
    let (head, filled) = http1::read_head(&mut reader, &mut buf)?;
    if head.status != 200 {
        bail!("the streamed echo answered {}", head.status);
    }
    let prefix = b"Received POST data: ";
    let expected = size + prefix.len() as u64;
    match head.framing {
        http1::Framing::Length(n) if n == expected => {}
        other => bail!("unexpected framing of the streamed echo: {other:?} (expected length {expected})"),
    }
    let mut received = (filled - head.len) as u64;
    let first: Vec<u8> = buf[head.len..filled].to_vec();
    while received < expected {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            bail!("the echo ended after {received} of {expected} bytes");
        }
        received += n as u64;
    }
    let elapsed = started.elapsed();
    sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    if !first.is_empty() && !prefix.starts_with(&first[..first.len().min(prefix.len())]) {
        bail!("the echo does not start with the POST prefix");
    }
    Ok(elapsed)
}
