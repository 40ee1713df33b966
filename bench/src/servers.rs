//! The servers under test, each a child process pinned to its cores, and what the benchmark
//! reads from them (readiness, memory, CPU time).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::http1;
use crate::procfs::{self, Memory};

/// What the benchmark runs: a name for the tables, and how to start it on a port.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    /// `{port}` is replaced by the port.
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn new(name: &str, program: impl Into<PathBuf>, args: &[&str]) -> Spec {
        Spec {
            name: name.to_string(),
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            env: Vec::new(),
        }
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Spec {
        self.cwd = Some(dir.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Spec {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Spec {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn renamed(mut self, name: &str) -> Spec {
        self.name = name.to_string();
        self
    }

    /// Starts the server on a free port, pinned to `cores`, its output appended to `log`.
    pub fn spawn(&self, cores: &[usize], log: &Path) -> anyhow::Result<Server> {
        let port = free_port()?;
        let mut command = Command::new(&self.program);
        command.args(self.args.iter().map(|a| a.replace("{port}", &port.to_string())));
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        // As in production: no backtrace capture on every error (a developer shell often sets it).
        command.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = File::options().create(true).append(true).open(log)?;
        command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        pin_child(&mut command, cores);
        let started = Instant::now();
        let child = command.spawn().with_context(|| format!("cannot start `{}`", self.program.display()))?;
        Ok(Server {
            name: self.name.clone(),
            pid: child.id(),
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            started,
        })
    }
}

/// Pins the child to `cores` between fork and exec (like `taskset -c`, without timing an extra
/// exec in the cold start).
pub fn pin_child(command: &mut Command, cores: &[usize]) {
    let cores = cores.to_vec();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // sched_setaffinity on a stack value.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &core in &cores {
                libc::CPU_SET(core, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// A running server; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    pub name: String,
    pub pid: u32,
    pub addr: SocketAddr,
    child: Child,
    /// Just before `spawn`.
    pub started: Instant,
}

impl Server {
    /// Polls `GET path` until a 200; returns the time from spawn to that 200 (the cold start).
    pub fn wait_ready(&mut self, path: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = http1::get_once(self.addr, path, Duration::from_secs(5))
                && response.status == 200
            {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("`{}` exited with {status} before answering (see its log)", self.name);
            }
            if Instant::now() > deadline {
                bail!("`{}` did not answer 200 on {path} within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    pub fn memory(&self) -> Memory {
        procfs::tree_memory(self.pid)
    }

    pub fn cpu_time(&self) -> Duration {
        procfs::tree_cpu_time(self.pid)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if !self.is_running() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in procfs::tree(self.pid).into_iter().rev() {
            // SAFETY: as above, our child and its descendants.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Samples a server's resident memory every `every` on a thread until stopped; returns the
/// sample with the highest RSS.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Memory>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = Memory::default();
            loop {
                let sample = procfs::tree_memory(pid);
                if sample.rss_kib > max.rss_kib {
                    max = sample;
                }
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return max;
                }
                std::thread::sleep(every);
            }
        });
        RssSampler { stop, handle }
    }

    /// The sample with the highest RSS.
    pub fn finish(self) -> Memory {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
