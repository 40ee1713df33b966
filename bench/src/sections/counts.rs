//! Counts that do not drift: user-space instructions and heap allocations per GET (callgrind),
//! syscalls per GET (`strace -c -f`), for echo-host and its peers, and the top functions of
//! echo-host's profile (by their own instructions) written to the results directory.
//!
//! Each server starts under the tool, answers [`WARMUP`] requests, has its counters zeroed, then
//! answers [`MEASURED`] `GET /?name=world` sent one after another on one keep-alive connection,
//! and the counters are read. Instructions and allocations are the same from run to run for the
//! same binary and inputs, whatever else the machine does. Syscalls are too on the threads that
//! serve; echo-host's two clock-driven threads ([`TIMER_THREADS`]: the epoch tick every 10 ms, the
//! log writer's write and 5 ms rest) make calls in proportion to how long the run takes under
//! strace, so they are counted apart, per second, and both figures are reported. callgrind sees
//! user space only: a host that
//! does more in the kernel (`wasmtime serve` maps and unmaps each instance's memory) counts fewer
//! instructions here and costs more CPU-seconds per request; the syscall column shows that side.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::p3::{p3_specs, third_party_specs};
use super::*;
use crate::http1::{self, Client};
use crate::procfs;

/// Requests answered before the counters are zeroed: pool slots, caches, lazy statics.
const WARMUP: usize = 100;
/// Requests counted.
const MEASURED: usize = 400;
/// Startup under valgrind includes compiling the component at 20-50x slower.
const VALGRIND_STARTUP: Duration = Duration::from_secs(600);
/// The functions of echo-host's profile kept in the results.
const TOP_FUNCTIONS: usize = 15;
/// echo-host's threads that wake on a clock, not per request: their calls per second are bounded
/// (the epoch tick: a sleep every 10 ms; the log writer: a write and a 5 ms rest at most per
/// 5 ms), so per GET they shrink as the request rate grows. Thread names as `comm` shows them.
const TIMER_THREADS: &[&str] = &["epoch-ticker", "echo-host-log"];
/// glibc's allocation entry points: the calls to them are the allocations.
const ALLOCATORS: &[&str] = &["malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"];

/// The servers counted: the throughput table's wasm hosts and native hyper, then the p3 table's
/// and the third-party p3 component's.
fn count_specs(paths: &Paths) -> Vec<Spec> {
    let p2 = specs(paths).into_iter().filter(|s| [ECHO_HOST, WASMTIME, NATIVE].contains(&s.name.as_str()));
    let p3 = p3_specs(paths).into_iter().filter(|s| s.name != NATIVE);
    p2.chain(p3).chain(third_party_specs(paths)).collect()
}

/// The servers of the counts table, each with the workload whose req per CPU-s it shows.
const COUNTED: [(&str, &str); 7] = [
    (ECHO_HOST, "get"),
    (WASMTIME, "get"),
    (NATIVE, "get"),
    (ECHO_HOST_P3, "p3"),
    (WASMTIME_P3, "p3"),
    (ECHO_HOST_P3_THIRD, "p3_third_party"),
    (WASMTIME_P3_THIRD, "p3_third_party"),
];

pub fn counts(paths: &Paths, _opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let dir = paths.work.join("counts");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for spec in count_specs(paths) {
        progress(&format!("callgrind: {}", spec.name));
        let profile = callgrind(paths, &spec, &dir)?;
        samples.add("counts.instructions", &spec.name, profile.instructions as f64 / MEASURED as f64);
        samples.add("counts.allocations", &spec.name, profile.allocations as f64 / MEASURED as f64);
        if [ECHO_HOST, ECHO_HOST_P3, ECHO_HOST_P3_THIRD].contains(&spec.name.as_str()) {
            let name = format!("callgrind-{}.txt", file_name(&spec.name));
            std::fs::write(paths.results.join(&name), top_functions(&spec.name, &profile))?;
        }
        progress(&format!("strace: {}", spec.name));
        let calls = strace(paths, &spec, &dir)?;
        let per_get = |n: u64| n as f64 / MEASURED as f64;
        samples.add("counts.syscalls", &spec.name, per_get(calls.total()));
        samples.add("counts.syscalls_serving", &spec.name, per_get(calls.serving()));
        samples.add("counts.timer_syscalls_per_s", &spec.name, calls.timer_per_second());
        let top: Vec<String> =
            calls.by_call(|_| true).iter().take(8).map(|(name, n)| format!("{name} {n}")).collect();
        progress(&format!(
            "{}: {:.0} instructions, {:.1} allocations, {:.2} syscalls per GET, {:.2} on the serving threads ({})",
            spec.name,
            per_get(profile.instructions),
            per_get(profile.allocations),
            per_get(calls.total()),
            per_get(calls.serving()),
            top.join(", ")
        ));
        std::fs::write(
            paths.results.join(format!("syscalls-{}.txt", file_name(&spec.name))),
            calls.listing(),
        )?;
    }
    Ok(())
}

fn file_name(server: &str) -> String {
    server.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// Sends `n` GETs on one keep-alive connection, each answered 200.
fn requests(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<()> {
    let mut client = Client::connect(addr, Duration::from_secs(60))?;
    let request = http1::get_request(GET_PATH);
    for _ in 0..n {
        let response = client.send(&request)?;
        if response.status != 200 {
            bail!("GET {GET_PATH} answered {}", response.status);
        }
    }
    Ok(())
}

/// What one callgrind dump holds.
#[derive(Debug, PartialEq)]
struct Profile {
    instructions: u64,
    allocations: u64,
    /// Instructions spent in each function itself (not in what it calls), most first.
    functions: Vec<(String, u64)>,
}

/// `spec` under callgrind: warm-up, zero, the measured requests, dump.
fn callgrind(paths: &Paths, spec: &Spec, dir: &Path) -> anyhow::Result<Profile> {
    let prefix = dir.join(format!("callgrind.{}", file_name(&spec.name)));
    // Names in full in every dump: compressed ones refer back to definitions in earlier dumps.
    let mut args = vec![
        "--tool=callgrind".to_string(),
        "--compress-strings=no".to_string(),
        format!("--callgrind-out-file={}.%p", prefix.display()),
    ];
    args.push(spec.program.display().to_string());
    args.extend(spec.args.iter().cloned());
    let under = Spec { program: "valgrind".into(), args, ..spec.clone() };
    let mut server = under.spawn(SERVER_CORES, &log_path(paths, &format!("{} callgrind", spec.name)))?;
    server.wait_ready(GET_PATH, VALGRIND_STARTUP)?;
    requests(server.addr, WARMUP)?;
    control(server.pid, "-z")?;
    requests(server.addr, MEASURED)?;
    control(server.pid, "-d")?;
    // valgrind runs in the process it was started as: the dump made by `-d` is `PREFIX.PID.N`
    // (the one written at exit has no suffix and counts the shutdown too).
    let base = format!("{}.{}", prefix.display(), server.pid);
    server.stop();
    let file = newest_dump(dir, &base)?;
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read `{}`", file.display()))?;
    parse_callgrind(&text)
}

fn control(pid: u32, what: &str) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .args([what, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("cannot run callgrind_control (Debian's valgrind)")?;
    if !status.success() {
        bail!("callgrind_control {what} {pid} failed ({status})");
    }
    Ok(())
}

fn newest_dump(dir: &Path, base: &str) -> anyhow::Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(n) =
            path.to_str().and_then(|p| p.strip_prefix(base)?.strip_prefix('.')?.parse::<u32>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, path));
        }
    }
    best.map(|(_, p)| p).with_context(|| format!("`callgrind_control -d` wrote no `{base}.N`"))
}

/// The total instructions (`summary:` or `totals:`), the calls into glibc's allocator and each
/// function's own instructions, from a dump written with `--compress-strings=no`. (Not
/// `callgrind_annotate`: valgrind 3.19's gives a dump taken after `-z` wholly to the function
/// that was running at the zero, `__libc_start_main`.)
fn parse_callgrind(text: &str) -> anyhow::Result<Profile> {
    let mut total = None;
    let mut function = "";
    let mut callee = "";
    // The cost line after `calls=` is the call's inclusive cost, not the caller's own.
    let mut call_cost_next = false;
    let mut allocations = 0;
    let mut own: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let first = line.bytes().next().unwrap_or(b' ');
        if first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'*') {
            let cost = line.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            if !std::mem::take(&mut call_cost_next) {
                *own.entry(function).or_default() += cost;
            }
        } else if let Some(rest) = line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:")) {
            total = rest.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).or(total);
        } else if let Some(name) = line.strip_prefix("fn=") {
            function = name.trim();
        } else if let Some(name) = line.strip_prefix("cfn=") {
            callee = name.trim();
        } else if let Some(rest) = line.strip_prefix("calls=") {
            if ALLOCATORS.contains(&callee) {
                allocations +=
                    rest.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            }
            call_cost_next = true;
        }
    }
    let mut functions: Vec<(String, u64)> = own.into_iter().map(|(f, n)| (f.to_string(), n)).collect();
    functions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let instructions = total.context("the callgrind dump has no `summary:` or `totals:` line")?;
    Ok(Profile { instructions, allocations, functions })
}

/// The first [`TOP_FUNCTIONS`] functions by their own instructions, per request.
fn top_functions(server: &str, profile: &Profile) -> String {
    let mut w = format!(
        "{server}: {} instructions per GET (callgrind, user space), the top {TOP_FUNCTIONS} functions by their own\n\n",
        profile.instructions / MEASURED as u64
    );
    for (name, own) in profile.functions.iter().take(TOP_FUNCTIONS) {
        let share = 100.0 * *own as f64 / profile.instructions.max(1) as f64;
        let _ = writeln!(w, "{:>9} {share:>5.1}%  {name}", own / MEASURED as u64);
    }
    w
}

/// The measured requests' system calls, each with the thread that made it.
#[derive(Debug, Default, PartialEq)]
struct Syscalls {
    /// (thread name, syscall) → calls.
    calls: HashMap<(String, String), u64>,
    /// How long the measured requests took under strace.
    seconds: f64,
}

impl Syscalls {
    fn is_timer(thread: &str) -> bool {
        TIMER_THREADS.contains(&thread)
    }

    fn total(&self) -> u64 {
        self.calls.values().sum()
    }

    /// Calls made on every thread but the [`TIMER_THREADS`].
    fn serving(&self) -> u64 {
        self.calls.iter().filter(|((thread, _), _)| !Self::is_timer(thread)).map(|(_, n)| n).sum()
    }

    fn timer_per_second(&self) -> f64 {
        (self.total() - self.serving()) as f64 / self.seconds.max(f64::EPSILON)
    }

    /// Calls per syscall on the threads `keep` accepts, most first.
    fn by_call(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
        let mut sums: HashMap<&str, u64> = HashMap::new();
        for ((thread, call), n) in &self.calls {
            if keep(thread) {
                *sums.entry(call).or_default() += n;
            }
        }
        let mut list: Vec<(String, u64)> = sums.into_iter().map(|(c, n)| (c.to_string(), n)).collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list
    }

    /// The results file: the serving threads' calls, then the timer threads', then per thread.
    fn listing(&self) -> String {
        let mut w = format!(
            "{MEASURED} GETs in {:.2} s under strace: {} calls on the serving threads ({:.2} per GET), {} on \
             the clock-driven threads {TIMER_THREADS:?} ({:.0} per second)\n\nserving threads:\n",
            self.seconds,
            self.serving(),
            self.serving() as f64 / MEASURED as f64,
            self.total() - self.serving(),
            self.timer_per_second()
        );
        for (name, n) in self.by_call(|t| !Self::is_timer(t)) {
            let _ = writeln!(w, "{n:>8} {name}");
        }
        let _ = writeln!(w, "\nclock-driven threads:");
        for (name, n) in self.by_call(Self::is_timer) {
            let _ = writeln!(w, "{n:>8} {name}");
        }
        let mut threads: HashMap<&str, u64> = HashMap::new();
        for ((thread, _), n) in &self.calls {
            *threads.entry(thread).or_default() += n;
        }
        let mut threads: Vec<_> = threads.into_iter().collect();
        threads.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let _ = writeln!(w, "\nper thread:");
        for (thread, n) in threads {
            let _ = writeln!(w, "{n:>8} {thread}");
        }
        w
    }
}

/// `spec` with `strace -f` attached to every thread for the measured requests: each call with
/// the name of the thread that made it.
fn strace(paths: &Paths, spec: &Spec, dir: &Path) -> anyhow::Result<Syscalls> {
    let server = start(paths, spec, SERVER_CORES)?;
    requests(server.addr, WARMUP)?;
    let out = dir.join(format!("strace.{}.txt", file_name(&spec.name)));
    let processes = procfs::tree(server.pid);
    // A line per call (`TID name(args) = result`); nothing decoded past what is needed.
    let mut strace = Command::new("strace")
        .args(["-f", "-s", "0", "-o"])
        .arg(&out)
        .args(processes.iter().flat_map(|pid| ["-p".to_string(), pid.to_string()]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run strace (Debian's strace)")?;
    // strace says "Process N attached with T threads" once per process, when it has them all:
    // wait for every one before the first request.
    let mut lines = BufReader::new(strace.stderr.take().context("strace stderr")?).lines();
    let mut attached = 0;
    while attached < processes.len() {
        match lines.next().transpose()? {
            Some(line) if line.contains("attached") => attached += 1,
            Some(_) => {}
            None => bail!("strace ended after attaching {attached} of {} processes", processes.len()),
        }
    }
    let started = std::time::Instant::now();
    requests(server.addr, MEASURED)?;
    let seconds = started.elapsed().as_secs_f64();
    let names = thread_names(&processes);
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(strace.id() as libc::pid_t, libc::SIGINT);
    }
    std::thread::spawn(move || lines.for_each(drop));
    strace.wait()?;
    server.stop();
    let text = std::fs::read_to_string(&out).with_context(|| format!("cannot read `{}`", out.display()))?;
    Ok(parse_strace(&text, &names, seconds))
}

/// Every live thread's name (`/proc/PID/task/TID/comm`) in `processes`.
fn thread_names(processes: &[u32]) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for pid in processes {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            names.insert(tid, name.trim().to_string());
        }
    }
    names
}

/// The calls in `strace -f`'s output (`TID name(…`, `TID <... name resumed>…` counted once, at its
/// start), each under its thread's name (`?` for a thread gone before the names were read).
fn parse_strace(text: &str, names: &HashMap<u32, String>, seconds: f64) -> Syscalls {
    let mut calls: HashMap<(String, String), u64> = HashMap::new();
    for line in text.lines() {
        let Some((tid, rest)) = line.trim_start().split_once(' ') else { continue };
        let Ok(tid) = tid.parse::<u32>() else { continue };
        let rest = rest.trim_start();
        let Some((call, _)) = rest.split_once('(') else { continue };
        if call.is_empty() || !call.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue; // `<... x resumed>`, `--- SIGCHLD …`, `+++ exited …`
        }
        let thread = names.get(&tid).cloned().unwrap_or_else(|| "?".into());
        *calls.entry((thread, call.to_string())).or_default() += 1;
    }
    Syscalls { calls, seconds }
}

/// The counts table, placed before the report's targets.
pub fn with_counts_table(markdown: String, s: &Samples) -> String {
    if s.get("counts.instructions", ECHO_HOST).is_none() {
        return markdown;
    }
    let mut w = String::new();
    let _ = writeln!(w, "## Counts per GET (callgrind, strace; the same from run to run)\n");
    let _ = writeln!(
        w,
        "`{MEASURED}` `GET {GET_PATH}` on one keep-alive connection after {WARMUP} of warm-up. Instructions and \
         allocations are user space only (callgrind). Syscalls (`strace -f`): every thread's, and the threads' \
         that serve, without echo-host's clock-driven epoch tick and log writer, whose calls per second are \
         bounded (listed per second in `syscalls-*.txt`). Under \
         valgrind the pool's `PAGEMAP_SCAN` reset is unavailable and falls back to `memset`. echo-host's top \
         functions: `callgrind-*.txt` beside this report.\n"
    );
    let _ = writeln!(
        w,
        "| server | instructions | allocations | syscalls | syscalls, serving threads | server CPU-s per 10k GET |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    for (server, metric) in COUNTED {
        let cpu = s.median(&format!("{metric}.rps_per_cpu"), server).map(|r| 10_000.0 / r);
        let _ = writeln!(
            w,
            "| {server} | {} | {} | {} | {} | {} |",
            count(s.median("counts.instructions", server)),
            s.median("counts.allocations", server).map_or("–".into(), |v| format!("{v:.1}")),
            s.median("counts.syscalls", server).map_or("–".into(), |v| format!("{v:.2}")),
            s.median("counts.syscalls_serving", server).map_or("–".into(), |v| format!("{v:.2}")),
            cpu.map_or("–".into(), |v| format!("{v:.3}")),
        );
    }
    let _ = writeln!(w);
    match markdown.find("## Targets\n") {
        Some(at) => format!("{}{w}{}", &markdown[..at], &markdown[at..]),
        None => markdown + &w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_dumps_give_totals_and_allocator_calls() {
        let dump = "events: Ir\nfn=main\n0 10\ncfn=malloc\ncalls=3 0\n0 30\ncfn=free\ncalls=3 0\n0 9\n+1 5\n\
                    fn=malloc\n0 30\nfn=other\ncfn=malloc\ncalls=2 0\n0 20\nsummary: 1234\n";
        let profile = parse_callgrind(dump).unwrap();
        assert_eq!((profile.instructions, profile.allocations), (1234, 5));
        assert_eq!(profile.functions, vec![("malloc".into(), 30), ("main".into(), 15)]);
        assert!(parse_callgrind("events: Ir\n").is_err());
    }

    #[test]
    fn strace_lines_give_calls_per_thread_with_the_timer_threads_apart() {
        let trace = "101 epoll_wait(3, [{events=EPOLLIN, data=0x1}], 1024, -1) = 1\n\
                     101 recvfrom(9, \"\"..., 8192, 0, NULL, NULL) = 38\n\
                     102 clock_nanosleep(CLOCK_REALTIME, 0, {tv_sec=0, tv_nsec=10000000},  <unfinished ...>\n\
                     101 writev(9, [...], 2) = 120\n\
                     102 <... clock_nanosleep resumed>NULL) = 0\n\
                     103 write(1, \"\"..., 400) = 400\n\
                     104 futex(0x7f, FUTEX_WAKE_PRIVATE, 1) = 0\n\
                     101 --- SIGURG {si_signo=SIGURG} ---\n\
                     104 +++ exited with 0 +++\n";
        let names: HashMap<u32, String> =
            [(101, "tokio-runtime-w"), (102, "epoch-ticker"), (103, "echo-host-log")]
                .into_iter()
                .map(|(t, n)| (t, n.to_string()))
                .collect();
        let calls = parse_strace(trace, &names, 0.5);
        assert_eq!((calls.total(), calls.serving()), (6, 4), "{calls:?}");
        assert_eq!(calls.timer_per_second(), 4.0);
        assert_eq!(calls.calls[&("?".to_string(), "futex".to_string())], 1, "a thread gone is `?`");
        let serving = calls.by_call(|t| !Syscalls::is_timer(t));
        assert_eq!(serving[0], ("epoll_wait".into(), 1));
        assert!(!serving.iter().any(|(c, _)| c == "write" || c == "clock_nanosleep"), "{serving:?}");
        let listing = calls.listing();
        assert!(listing.contains("4 calls on the serving threads (0.01 per GET)"), "{listing}");
        assert!(listing.contains("(4 per second)"), "{listing}");
    }
}
