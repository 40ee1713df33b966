//! The soak's clients, each a thread pacing itself until the soak stops. Well-formed: keep-alive
//! GET and POST on the open-loop client, 64 MiB streamed POSTs checked by hash, h2c GET and POST,
//! a trickled request body, a slow reader. Broken: a body cut off mid-way, garbage bytes (HTTP/1
//! and after the h2 preface), a response abandoned mid-way. About 300 requests/s in all.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

use super::{Ctx, Kind};
use crate::http1::{self, Client};
use crate::openloop;
use crate::sections::post_body;

const GET_RATE: f64 = 150.0;
const GET_CONNECTIONS: usize = 8;
const POST_RATE: f64 = 50.0;
const POST_CONNECTIONS: usize = 4;
/// Each open-loop run lasts this long (then its connections close and new ones open), so the
/// counts move during the soak.
const SLICE: Duration = Duration::from_secs(10);
const STREAM_BYTES: u64 = 64 << 20;
const STREAM_EVERY: Duration = Duration::from_secs(5);
const H2C_RATE: f64 = 50.0;
/// The trickled body: `TRICKLE_BYTES` in pieces of `TRICKLE_PIECE` every `TRICKLE_GAP` (3.2 s).
const TRICKLE_BYTES: usize = 2048;
const TRICKLE_PIECE: usize = 64;
const TRICKLE_GAP: Duration = Duration::from_millis(100);
const TRICKLERS: usize = 2;
/// The slow reader: an 8 MiB echo read 64 KiB every 25 ms (2.5 MiB/s, about 3 s).
const SLOW_BYTES: u64 = 8 << 20;
const SLOW_PACE: Pace = Pace { bytes: 64 * 1024, every: Duration::from_millis(25) };
/// One broken client of each kind in turn, this often.
const BROKEN_EVERY: Duration = Duration::from_millis(500);
const PREFIX: &[u8] = b"Received POST data: ";
const TIMEOUT: Duration = Duration::from_secs(60);

/// One client's loop, run on its own thread.
type ClientLoop<'scope> = Box<dyn FnOnce() + Send + 'scope>;

/// Starts every client on its own thread.
pub fn spawn_all<'scope>(
    scope: &'scope Scope<'scope, '_>,
    ctx: &'scope Ctx,
) -> Vec<ScopedJoinHandle<'scope, ()>> {
    let mut clients: Vec<(&str, ClientLoop<'scope>)> = vec![
        (
            "get",
            Box::new(move || {
                open_loop(ctx, Kind::Get, &http1::get_request("/?soak=get"), GET_CONNECTIONS, GET_RATE)
            }),
        ),
        (
            "post",
            Box::new(move || {
                open_loop(
                    ctx,
                    Kind::Post,
                    &http1::post_request("/", &post_body()),
                    POST_CONNECTIONS,
                    POST_RATE,
                )
            }),
        ),
        ("stream", Box::new(move || streams(ctx))),
        ("h2c", Box::new(move || h2c(ctx))),
        ("slow-reader", Box::new(move || slow_reader(ctx))),
        ("broken", Box::new(move || broken(ctx))),
    ];
    for i in 0..TRICKLERS {
        clients.push(("trickle", Box::new(move || trickler(ctx, i))));
    }
    clients
        .into_iter()
        .map(|(name, client)| {
            std::thread::Builder::new()
                .name(format!("soak-{name}"))
                .spawn_scoped(scope, client)
                .expect("spawning a soak client thread")
        })
        .collect()
}

/// Open-loop `request` at `rate` over `connections`, in [`SLICE`]-long runs.
fn open_loop(ctx: &Ctx, kind: Kind, request: &[u8], connections: usize, rate: f64) {
    while ctx.running() {
        match openloop::run(ctx.addr, request, connections, rate, Duration::ZERO, SLICE, Some(&ctx.stop)) {
            Ok(result) => {
                ctx.tally.add(kind, result.responses, 0);
                if result.errors > 0 {
                    let error = anyhow::anyhow!(
                        "{} failed (non-2xx, cut or unanswered after 5 s) in one open-loop run of {} responses",
                        result.errors,
                        result.responses
                    );
                    ctx.tally.fail_many(ctx, kind, result.errors, &error);
                }
            }
            Err(error) => {
                ctx.tally.fail(ctx, kind, &error);
                ctx.pause_until(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

fn streams(ctx: &Ctx) {
    let mut seed = 0;
    let mut next = Instant::now();
    while ctx.pause_until(next) {
        next += STREAM_EVERY;
        seed += 1;
        ctx.tally.record(ctx, Kind::Stream, hashed_echo(ctx.addr, STREAM_BYTES, seed, None));
    }
}

fn slow_reader(ctx: &Ctx) {
    let mut seed = 1 << 32;
    while ctx.running() {
        seed += 1;
        let outcome = hashed_echo(ctx.addr, SLOW_BYTES, seed, Some(SLOW_PACE));
        let failed = outcome.is_err();
        ctx.tally.record(ctx, Kind::SlowReader, outcome);
        if failed {
            // A host that refuses at once (a 413) must not turn this into a tight loop.
            ctx.pause_until(Instant::now() + Duration::from_secs(1));
        }
    }
}

/// How a slow reader takes the response: `bytes` at a time, every `every`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    bytes: usize,
    every: Duration,
}

/// Pseudo-random bytes (xorshift64) from `seed`, so each stream's body differs.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            word.copy_from_slice(&self.0.to_le_bytes()[..word.len()]);
        }
    }
}

/// The echoed body: the POST prefix, then bytes whose hash must be the sent body's.
struct EchoCheck {
    prefix_at: usize,
    hasher: Sha256,
}

impl EchoCheck {
    fn feed(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let take = (PREFIX.len() - self.prefix_at).min(bytes.len());
        if bytes[..take] != PREFIX[self.prefix_at..self.prefix_at + take] {
            bail!("the echo does not start with `Received POST data: `");
        }
        self.prefix_at += take;
        self.hasher.update(&bytes[take..]);
        Ok(())
    }
}

/// POSTs `size` pseudo-random bytes while reading the echo (at `pace` when given); the echo must
/// hash like what was sent.
fn hashed_echo(addr: SocketAddr, size: u64, seed: u64, pace: Option<Pace>) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).context("connecting")?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || send_noise(writer, size, seed));
    let received = read_echo(&stream, size, pace);
    if received.is_err() {
        // Unblocks the sender.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let sent = sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))?;
    let received = received?;
    let sent = sent.context("sending the body")?;
    if sent != received {
        bail!("the echo of {size} bytes (seed {seed}) does not hash like the body sent");
    }
    Ok(())
}

fn send_noise(mut writer: TcpStream, size: u64, seed: u64) -> anyhow::Result<[u8; 32]> {
    const CHUNK: usize = 256 * 1024;
    let head = format!(
        "POST /?soak=stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    );
    writer.write_all(head.as_bytes())?;
    let mut noise = Noise(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        noise.fill(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        writer.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

/// Reads the echo of a `size`-byte POST; the hash of the body after the prefix.
fn read_echo(mut reader: &TcpStream, size: u64, pace: Option<Pace>) -> anyhow::Result<[u8; 32]> {
    let mut buf = vec![0u8; 256 * 1024];
    let (head, filled) = http1::read_head(&mut reader, &mut buf)?;
    if head.status != 200 {
        bail!("the echo answered {}", head.status);
    }
    let expected = size + PREFIX.len() as u64;
    if head.framing != http1::Framing::Length(expected) {
        bail!("the echo's framing is {:?}, not a length of {expected}", head.framing);
    }
    let mut check = EchoCheck { prefix_at: 0, hasher: Sha256::new() };
    check.feed(&buf[head.len..filled])?;
    let mut received = (filled - head.len) as u64;
    let read_size = pace.map_or(buf.len(), |p| p.bytes);
    while received < expected {
        if let Some(pace) = pace {
            std::thread::sleep(pace.every);
        }
        let want = read_size.min((expected - received) as usize);
        let n = reader.read(&mut buf[..want]).context("reading the echo")?;
        if n == 0 {
            bail!("the echo ended after {received} of {expected} bytes");
        }
        check.feed(&buf[..n])?;
        received += n as u64;
    }
    Ok(check.hasher.finalize().into())
}

/// A POST whose body comes in small pieces with pauses (a slow upload), then its echo.
fn trickler(ctx: &Ctx, index: usize) {
    let body: Vec<u8> = post_body().into_iter().cycle().take(TRICKLE_BYTES).collect();
    // The two tricklers half a trickle apart.
    let mut next = Instant::now() + TRICKLE_GAP * (16 * index as u32);
    while ctx.pause_until(next) {
        let outcome = trickle_once(ctx, &body);
        // After a failure, a second before the next one (no tight loop on a refusing host).
        next = Instant::now() + if outcome.is_err() { Duration::from_secs(1) } else { Duration::ZERO };
        ctx.tally.record(ctx, Kind::Trickle, outcome);
    }
}

fn trickle_once(ctx: &Ctx, body: &[u8]) -> anyhow::Result<()> {
    let mut client = Client::connect(ctx.addr, TIMEOUT)?;
    let head = format!(
        "POST /?soak=trickle HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write(head.as_bytes())?;
    for piece in body.chunks(TRICKLE_PIECE) {
        std::thread::sleep(TRICKLE_GAP);
        client.write(piece)?;
    }
    let response = client.read_response()?;
    if response.status != 200 || response.body.strip_prefix(PREFIX) != Some(body) {
        bail!(
            "the trickled POST answered {} with a {}-byte body, not the echo",
            response.status,
            response.body.len()
        );
    }
    Ok(())
}

/// h2c (prior knowledge) GET and POST at [`H2C_RATE`], one connection per [`SLICE`].
fn h2c(ctx: &Ctx) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return ctx.tally.fail(ctx, Kind::H2c, &error.into()),
    };
    while ctx.running() {
        if let Err(error) = runtime.block_on(h2c_connection(ctx)) {
            ctx.tally.fail(ctx, Kind::H2c, &error);
            ctx.pause_until(Instant::now() + Duration::from_secs(1));
        }
    }
}

async fn h2c_connection(ctx: &Ctx) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(ctx.addr).await.context("connecting")?;
    tcp.set_nodelay(true)?;
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .context("the h2c handshake")?;
    let connection = tokio::spawn(connection);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / H2C_RATE));
    let until = Instant::now() + SLICE;
    let mut requests = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    while ctx.running() && Instant::now() < until {
        tick.tick().await;
        n += 1;
        let sender = sender.clone();
        let addr = ctx.addr;
        requests.spawn(async move {
            match tokio::time::timeout(TIMEOUT, h2c_request(sender, addr, n)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(anyhow::anyhow!("h2c request {n} had no answer in {TIMEOUT:?}")),
            }
        });
        while let Some(done) = requests.try_join_next() {
            ctx.tally.record(ctx, Kind::H2c, done.context("the request task").and_then(|r| r));
        }
    }
    while let Some(done) = requests.join_next().await {
        ctx.tally.record(ctx, Kind::H2c, done.context("the request task").and_then(|r| r));
    }
    drop(sender);
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .context("the h2c connection did not close")?
        .context("the connection task")?
        .context("the h2c connection")
}

/// Even `n`: a GET; odd: a 1 KiB POST. Checks the status and the echo.
async fn h2c_request(
    mut sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    n: u64,
) -> anyhow::Result<()> {
    let (method, body, expected) = if n.is_multiple_of(2) {
        (http::Method::GET, Vec::new(), b"Received GET request.".to_vec())
    } else {
        let body = post_body();
        (http::Method::POST, body.clone(), [PREFIX, body.as_slice()].concat())
    };
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}/?soak=h2c"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    if status != 200 || !answer.starts_with(&expected) {
        bail!(
            "h2c request {n} answered {status}: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        );
    }
    Ok(())
}

/// The broken clients in turn; their outcome is expected to be a cut or an error response, and is
/// counted apart from the well-formed requests.
fn broken(ctx: &Ctx) {
    let mut next = Instant::now();
    let mut round: u64 = 0;
    while ctx.pause_until(next) {
        next += BROKEN_EVERY;
        round += 1;
        let (kind, outcome) = match round % 3 {
            0 => (Kind::MidBody, cut_mid_body(ctx.addr)),
            1 => (Kind::Garbage, garbage(ctx.addr, round)),
            _ => (Kind::Abandon, abandon_response(ctx.addr, round)),
        };
        ctx.tally.record(ctx, kind, outcome);
    }
}

/// Announces a 1 MiB body, sends 256 KiB of it, and closes.
fn cut_mid_body(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.write_all(b"POST /?soak=cut HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1048576\r\n\r\n")?;
    stream.write_all(&vec![b'x'; 256 * 1024])?;
    Ok(())
}

/// Random bytes, alternately raw and after the h2 preface: the host must answer 4xx or close,
/// well within the timeout.
fn garbage(addr: SocketAddr, round: u64) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut bytes =
        if round.is_multiple_of(2) { b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec() } else { Vec::new() };
    let mut noise = vec![0u8; 1024];
    Noise(round | 1).fill(&mut noise);
    bytes.extend_from_slice(&noise);
    // The host may close as soon as it sees the first bad bytes: a failed write is fine.
    let _ = stream.write_all(&bytes);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
        Err(e) => return Err(e).context("the host neither answered nor closed the connection in 30 s"),
    }
    if answer.starts_with(b"HTTP/1.1 2") {
        bail!("garbage answered {:?}", String::from_utf8_lossy(&answer[..answer.len().min(40)]));
    }
    Ok(())
}

/// A 4 MiB echo, of which it reads the head and 64 KiB before closing.
fn abandon_response(addr: SocketAddr, round: u64) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || send_noise(writer, 4 << 20, round));
    let mut buf = vec![0u8; 64 * 1024];
    let mut taken = 0;
    let mut reader = &stream;
    while taken < buf.len() {
        let n = reader.read(&mut buf[taken..])?;
        if n == 0 {
            break;
        }
        taken += n;
    }
    let _ = stream.shutdown(Shutdown::Both);
    // The sender fails once the connection is shut down; that is the point.
    let _ = sender.join();
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!("the echo to abandon answered {:?}", String::from_utf8_lossy(&buf[..taken.min(40)]));
    }
    Ok(())
}
